using System.Text.Json.Nodes;

using QLoRA.IO;
using QLoRA.Models;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Tests.Models;

/// <summary>
/// The Hugging Face path with real weights: llama2.c → HF conversion (RoPE permutation), loading it back
/// (rotate-half RoPE, safetensors, tokenizer.model), sharded checkpoints, and our bitsandbytes 4-bit writer.
/// </summary>
public class CheckpointTests
{
    private string _dir = "";

    [OneTimeSetUp]
    public void Load() => TorchRuntime.EnsureLoaded();

    [SetUp]
    public void SetUp() => _dir = TestModels.TempDir("ckpt");

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, true);

    private static Tensor Logits(LlamaForCausalLM m, IReadOnlyList<int> ids)
    {
        using var _ = no_grad();
        using var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Count]);
        return m.forward(input);
    }

    [Test]
    public void ConvertedHuggingFaceModelGivesTheLlama2cLogits()
    {
        var files = TestModels.Files;
        var written = Checkpoints.ConvertLlama2cToHuggingFace(files.ModelPath, files.TokenizerPath, _dir);
        Assert.That(written.Tensors, Is.EqualTo(1 + 6 * 9 + 1));
        foreach (string f in new[] { "config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json", "generation_config.json" })
            Assert.That(File.Exists(Path.Combine(_dir, f)), f);

        using var hf = ModelLoader.Load(_dir, new ModelLoadOptions { Quant = QuantSpec.None });
        Assert.That(hf.Format, Is.EqualTo("hf"));
        Assert.That(hf.Model.Config.RopeStyle, Is.EqualTo(RopeStyle.Half));
        Assert.That(hf.Model.Config.TieWordEmbeddings, Is.True);
        var native = TestModels.Stories(QuantSpec.None);
        var tok = hf.RequireTokenizer();
        var ids = tok.Encode("Lily wanted to fly a kite, but the wind was too strong.");
        Assert.That(ids, Is.EqualTo(native.RequireTokenizer().Encode("Lily wanted to fly a kite, but the wind was too strong.")),
            "tokenizer.model and tokenizer.bin agree");
        using var a = Logits(native.Model, ids);
        using var b = Logits(hf.Model, ids);
        double diff = (a - b).abs().max().item<float>();
        Assert.That(diff, Is.LessThan(1e-4), "rotate-half on permuted rows = adjacent pairs on the original rows");

        // The permutation itself: within each head, HF row j is llama2.c row 2j and row half + j is row 2j + 1.
        using var file = SafetensorsFile.Open(Path.Combine(_dir, "model.safetensors"));
        var q = file.Get("model.layers.0.self_attn.q_proj.weight");
        Assert.That(q.Shape, Is.EqualTo(new long[] { 288, 288 }));
        using var l2c = Llama2cModelFile.Open(files.ModelPath);
        unsafe
        {
            var hfRows = new ReadOnlySpan<float>(file.Data(q).Data, 288 * 288);
            var orig = new ReadOnlySpan<float>(l2c.Weight(QLoRA.Native.QLoraLlama2cWeight.Wq, 0).Data, 288 * 288);
            int hd = 48, half = 24;
            foreach (var (head, j) in new[] { (0, 0), (0, 5), (3, 23), (5, 11) })
            {
                Assert.That(hfRows.Slice((head * hd + j) * 288, 288).SequenceEqual(orig.Slice((head * hd + 2 * j) * 288, 288)), $"head {head} row {j}");
                Assert.That(hfRows.Slice((head * hd + half + j) * 288, 288).SequenceEqual(orig.Slice((head * hd + 2 * j + 1) * 288, 288)), $"head {head} row {half + j}");
            }
        }
    }

    [Test]
    public void MistralSlidingWindowMasksOnlyBeyondTheWindow()
    {
        var files = TestModels.Files;
        Checkpoints.ConvertLlama2cToHuggingFace(files.ModelPath, files.TokenizerPath, _dir);
        using var full = ModelLoader.Load(_dir, new ModelLoadOptions { Quant = QuantSpec.None, LoadTokenizer = false });
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "config.json")))!.AsObject();
        cfg["model_type"] = "mistral";
        cfg["architectures"] = new JsonArray("MistralForCausalLM");
        cfg["sliding_window"] = 6;
        File.WriteAllText(Path.Combine(_dir, "config.json"), cfg.ToJsonString());
        using var win = ModelLoader.Load(_dir, new ModelLoadOptions { Quant = QuantSpec.None, LoadTokenizer = false });
        Assert.That(win.Model.Config.SlidingWindow, Is.EqualTo(6));
        int[] ids = [1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826, 4257, 365, 2354, 29889];
        using var a = Logits(full.Model, ids);
        using var b = Logits(win.Model, ids);
        // Positions 0..5 see at most 6 tokens either way; from position 6 on the window hides the oldest ones.
        Assert.That((a.narrow(1, 0, 6) - b.narrow(1, 0, 6)).abs().max().item<float>(), Is.LessThan(1e-4));
        for (int t = 6; t < ids.Length; t++)
            Assert.That((a.narrow(1, t, 1) - b.narrow(1, t, 1)).abs().max().item<float>(), Is.GreaterThan(1e-3), $"position {t}");
    }

    [Test]
    public void ShardedCheckpointWithIndexLoadsTheSameModel()
    {
        var files = TestModels.Files;
        string full = Path.Combine(_dir, "full");
        Checkpoints.ConvertLlama2cToHuggingFace(files.ModelPath, files.TokenizerPath, full);
        // Split model.safetensors into two shards + an index, as transformers does.
        string sharded = Path.Combine(_dir, "sharded");
        Directory.CreateDirectory(sharded);
        foreach (string f in Directory.GetFiles(full).Where(f => !f.EndsWith(".safetensors")))
            File.Copy(f, Path.Combine(sharded, Path.GetFileName(f)));
        var map = new JsonObject();
        using (var src = SafetensorsFile.Open(Path.Combine(full, "model.safetensors")))
        {
            var names = src.Tensors.Select(t => t.Name).OrderBy(n => n, StringComparer.Ordinal).ToList();
            for (int s = 0; s < 2; s++)
            {
                string shard = $"model-0000{s + 1}-of-00002.safetensors";
                using var w = new SafetensorsWriter();
                foreach (string n in names.Where((_, i) => i % 2 == s))
                {
                    var t = src.Get(n);
                    w.Add(n, src.Data(t), t.Shape, borrow: true, owner: src);
                    map[n] = shard;
                }
                w.Write(Path.Combine(sharded, shard));
            }
        }
        Checkpoints.WriteJson(Path.Combine(sharded, "model.safetensors.index.json"), new JsonObject { ["metadata"] = new JsonObject(), ["weight_map"] = map });
        using var a = ModelLoader.Load(full, new ModelLoadOptions { Quant = QuantSpec.None });
        using var b = ModelLoader.Load(sharded, new ModelLoadOptions { Quant = QuantSpec.None });
        int[] ids = [1, 450, 4940, 11203, 3448];
        using var la = Logits(a.Model, ids);
        using var lb = Logits(b.Model, ids);
        Assert.That((la - lb).abs().max().item<float>(), Is.EqualTo(0f));
    }

    [TestCase("nf4", true)]
    [TestCase("fp4", false)]
    public void BitsAndBytesCheckpointRoundTripsBitExactly(string quant, bool doubleQuant)
    {
        var spec = QuantSpec.Parse(quant, 64, doubleQuant);
        var files = TestModels.Files;
        var e0 = Assert.Throws<InvalidOperationException>(() => Checkpoints.WriteBitsAndBytes(TestModels.Stories(QuantSpec.Nf4), _dir, files.TokenizerPath));
        Assert.That(e0!.Message, Does.Contain("rotate-half"));
        using var q = ModelLoader.LoadLlama2c(files.ModelPath, new ModelLoadOptions { Quant = spec, TokenizerPath = files.TokenizerPath, RotateHalf = true });
        var written = Checkpoints.WriteBitsAndBytes(q, _dir, files.TokenizerPath);
        Assert.That(written.BitsPerParam, Is.EqualTo(doubleQuant ? 4.127 : 4.5).Within(0.002));

        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "config.json")))!;
        Assert.That(cfg["quantization_config"]!["quant_method"]!.GetValue<string>(), Is.EqualTo("bitsandbytes"));
        Assert.That(cfg["quantization_config"]!["bnb_4bit_quant_type"]!.GetValue<string>(), Is.EqualTo(quant));
        Assert.That(cfg["quantization_config"]!["bnb_4bit_use_double_quant"]!.GetValue<bool>(), Is.EqualTo(doubleQuant));
        using (var st = SafetensorsFile.Open(Path.Combine(_dir, "model.safetensors")))
        {
            var w = st.Get("model.layers.0.self_attn.q_proj.weight");
            Assert.That(w.Dtype, Is.EqualTo(QLoRA.Native.QLoraDtype.U8));
            Assert.That(w.Shape, Is.EqualTo(new long[] { 288 * 288 / 2, 1 }));
            Assert.That(st.Contains($"model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__{quant}"));
            Assert.That(st.Contains("model.layers.0.self_attn.q_proj.weight.nested_absmax"), Is.EqualTo(doubleQuant));
        }

        using var back = ModelLoader.Load(_dir);
        Assert.That(back.Format, Is.EqualTo("hf-bnb-4bit"));
        Assert.That(back.Quant.Name, Is.EqualTo(spec.Name));
        var pairs = q.Model.LinearLayers().Zip(back.Model.LinearLayers()).ToList();
        Assert.That(pairs, Has.Count.EqualTo(42));
        foreach (var (x, y) in pairs)
        {
            Assert.That(y.Name, Is.EqualTo(x.Name));
            var wx = ((Linear4bit)x.Layer).Weight;
            var wy = ((Linear4bit)y.Layer).Weight;
            Assert.That(wy.Packed.SequenceEqual(wx.Packed), x.Name + " nibbles");
            Assert.That(wy.QAbsmax.SequenceEqual(wx.QAbsmax) && wy.Absmax.SequenceEqual(wx.Absmax), x.Name + " scales");
        }
        int[] ids = [1, 9038, 2501, 263, 931];
        using var a = Logits(q.Model, ids);
        using var b = Logits(back.Model, ids);
        Assert.That((a - b).abs().max().item<float>(), Is.EqualTo(0f), "loads back identically");

        // --quant none dequantizes the stored weights; asking for another 4-bit format is refused.
        using var dense = ModelLoader.Load(_dir, new ModelLoadOptions { Quant = QuantSpec.None });
        Assert.That(dense.Model.LinearLayers().All(l => l.Layer is DenseLinear));
        using var c = Logits(dense.Model, ids);
        Assert.That((a - c).abs().max().item<float>(), Is.LessThan(1e-3));
        var e = Assert.Throws<InvalidDataException>(() => ModelLoader.Load(_dir, new ModelLoadOptions { Quant = QuantSpec.Parse("int4") }));
        Assert.That(e!.Message, Does.Contain("config.json").And.Contain("already quantized"));
    }

    [Test]
    public void Int4CannotBeWrittenAsBitsAndBytes()
    {
        string path = Path.Combine(_dir, "m.bin");
        SyntheticLlama2c.Write(path, 32, 48, 1, 2, 2, 300, 16, true, 1);
        using var m = ModelLoader.LoadLlama2c(path, new ModelLoadOptions { Quant = QuantSpec.Parse("int4"), LoadTokenizer = false, RotateHalf = true });
        var e = Assert.Throws<InvalidOperationException>(() => Checkpoints.WriteBitsAndBytes(m, Path.Combine(_dir, "out")));
        Assert.That(e!.Message, Does.Contain("Int4"));
    }
}
