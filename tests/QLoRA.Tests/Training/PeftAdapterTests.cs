using System.Text.Json.Nodes;

using QLoRA.Adapters;
using QLoRA.IO;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Native;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Tests.Training;

public class PeftAdapterTests
{
    private string _dir = "";

    [SetUp]
    public void Dir() => _dir = Directory.CreateTempSubdirectory("qlora-peft-").FullName;

    [TearDown]
    public void Clean() => Directory.Delete(_dir, true);

    private static LoraModel Adapted(LlamaForCausalLM model, int seed, IReadOnlyList<string>? targets = null)
    {
        var lora = LoraModel.Inject(model, new LoraOptions { Rank = 4, Alpha = 16, Dropout = 0.05, TargetModules = targets }, seed);
        using var gen = new Generator((ulong)seed + 100);
        using (no_grad())
            foreach (var (_, l) in lora.Layers) l.B.copy_(randn(l.B.shape, generator: gen).mul_(0.05f));
        return lora;
    }

    [Test]
    public void FilesMatchFormatsMd()
    {
        using var model = TinyModels.Build(1, QuantSpec.Nf4);
        var lora = Adapted(model, 2);
        PeftAdapter.Save(lora, _dir, "stories15M");

        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir, "adapter_config.json")))!.AsObject();
        Assert.That((string?)cfg["peft_type"], Is.EqualTo("LORA"));
        Assert.That((string?)cfg["task_type"], Is.EqualTo("CAUSAL_LM"));
        Assert.That((int)cfg["r"]!, Is.EqualTo(4));
        Assert.That((double)cfg["lora_alpha"]!, Is.EqualTo(16));
        Assert.That((double)cfg["lora_dropout"]!, Is.EqualTo(0.05));
        Assert.That(cfg["target_modules"]!.AsArray().Select(n => (string?)n), Is.EqualTo(new[] { "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj" }));
        Assert.That((string?)cfg["bias"], Is.EqualTo("none"));
        Assert.That((bool)cfg["fan_in_fan_out"]!, Is.False);
        Assert.That((bool)cfg["use_rslora"]!, Is.False);
        Assert.That((string?)cfg["base_model_name_or_path"], Is.EqualTo("stories15M"));
        Assert.That((bool)cfg["inference_mode"]!, Is.True);

        using var st = SafetensorsFile.Open(Path.Combine(_dir, "adapter_model.safetensors"));
        Assert.That(st.Tensors, Has.Count.EqualTo(2 * 2 * 7));
        var c = model.Config;
        var expect = new Dictionary<string, long[]>
        {
            ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"] = [4, c.HiddenSize],
            ["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = [c.HiddenSize, 4],
            ["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"] = [c.KvDim, 4],
            ["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"] = [4, c.IntermediateSize],
            ["base_model.model.model.layers.1.mlp.gate_proj.lora_B.weight"] = [c.IntermediateSize, 4],
        };
        foreach (var (key, shape) in expect)
        {
            var t = st.Get(key);
            Assert.That(t.Shape, Is.EqualTo(shape), key);
            Assert.That(t.Dtype, Is.EqualTo(QLoraDtype.F32), key);
        }
        // Values: A as trained, B too (Half RoPE model: no permutation).
        var a = TensorViews.FromView(st.Data(st.Get("base_model.model.model.layers.0.mlp.up_proj.lora_A.weight")), [4, c.HiddenSize], ScalarType.Float32);
        Assert.That(a.allclose(lora.Layers.Single(l => l.Name == "model.layers.0.mlp.up_proj").Layer.A, 0, 0));

        PeftAdapter.Save(lora, Path.Combine(_dir, "bf16"), "x", ScalarType.BFloat16);
        using var st16 = SafetensorsFile.Open(Path.Combine(_dir, "bf16", "adapter_model.safetensors"));
        Assert.That(st16.Tensors.All(t => t.Dtype == QLoraDtype.Bf16));
    }

    [Test]
    public void RoundTripsOntoAFreshModel()
    {
        using var m1 = TinyModels.Build(1, QuantSpec.Nf4);
        var lora = Adapted(m1, 3, ["q_proj", "v_proj", "down_proj"]);
        PeftAdapter.Save(lora, _dir, "tiny");
        using var m2 = TinyModels.Build(1, QuantSpec.Nf4);
        var loaded = PeftAdapter.Load(m2, _dir);
        Assert.That(loaded.Layers.Select(l => l.Name), Is.EqualTo(lora.Layers.Select(l => l.Name)));
        Assert.That(loaded.Options.Rank, Is.EqualTo(4));
        using var ids = tensor(new long[] { 1, 50, 60, 70, 80, 90 }, [1, 6]);
        using var y1 = m1.call(ids);
        using var y2 = m2.call(ids);
        Assert.That(y2.allclose(y1, 0, 0), "the same function");
        using var m3 = TinyModels.Build(1, QuantSpec.Nf4);
        using var y3 = m3.call(ids);
        Assert.That(y3.allclose(y1, 1e-3, 1e-3), Is.False, "the adapter changes the output");
    }

    [Test]
    public void AdapterFromALlama2cConventionModelIsInHuggingFaceLayout()
    {
        // The same weights in both conventions compute the same function.
        using var adj = TinyModels.Build(5, QuantSpec.None, rope: RopeStyle.Adjacent);
        using var hf = TinyModels.Build(5, QuantSpec.None, asHuggingFace: true);
        using var ids = tensor(new long[] { 1, 40, 41, 42, 43, 44, 45, 46 }, [1, 8]);
        using (var a = adj.call(ids)) using (var b = hf.call(ids))
            Assert.That(b.allclose(a, 1e-4, 1e-4), "base models agree");

        var hfLinear = hf.LinearLayers().ToDictionary(l => l.Name, l => l.Layer);
        var lora = Adapted(adj, 6);
        PeftAdapter.Save(lora, _dir, "adj");
        using var yAdj = adj.call(ids);
        var onHf = PeftAdapter.Load(hf, _dir);
        using var yHf = hf.call(ids);
        Assert.That(yHf.allclose(yAdj, 1e-4, 1e-4), "the saved adapter on the HF-layout model gives the same logits");

        // Merged weights in HF layout equal base + scale * B A computed from the file's tensors.
        string merged = Path.Combine(_dir, "merged");
        var r = AdapterMerge.Write(lora, merged, MergedFormat.Fp32);
        Assert.That(r.MergedLayers, Is.EqualTo(14));
        using var st = SafetensorsFile.Open(Path.Combine(merged, "model.safetensors"));
        using var ad = SafetensorsFile.Open(Path.Combine(_dir, "adapter_model.safetensors"));
        foreach (var (name, _) in lora.Layers)
        {
            var w = st.Get(name + ".weight");
            using var wm = TensorViews.FromView(st.Data(w), w.Shape, ScalarType.Float32);
            var at = ad.Get(PeftAdapter.Key(name, 'A'));
            var bt = ad.Get(PeftAdapter.Key(name, 'B'));
            using var a = TensorViews.FromView(ad.Data(at), at.Shape, ScalarType.Float64);
            using var b = TensorViews.FromView(ad.Data(bt), bt.Shape, ScalarType.Float64);
            using var w0 = hfLinear[name].DequantizedWeight().to(ScalarType.Float64);
            using var expect = w0 + b.matmul(a) * 4.0;   // alpha / r = 16 / 4
            double err = (wm.to(ScalarType.Float64) - expect).abs().max().item<double>();
            Assert.That(err, Is.LessThan(1e-5), name);
        }
        var cfg = JsonNode.Parse(File.ReadAllText(Path.Combine(merged, "config.json")))!.AsObject();
        Assert.That((int)cfg["num_hidden_layers"]!, Is.EqualTo(2));
    }

    [Test]
    public void NF4ReQuantizedMergeReportsItsError()
    {
        using var model = TinyModels.Build(7, QuantSpec.None);
        var lora = Adapted(model, 8);
        var r = AdapterMerge.Write(lora, _dir, MergedFormat.Nf4);
        Assert.That(r.Nf4RelativeError, Is.InRange(0.02, 0.2), "NF4 of Gaussian weights: about 10% relative error");
        using var st = SafetensorsFile.Open(Path.Combine(_dir, "model.safetensors"));
        Assert.That(st.Contains("model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4"));
        var loaded = ModelLoader.Load(_dir, new ModelLoadOptions { LoadTokenizer = false });
        Assert.That(loaded.Format, Is.EqualTo("hf-bnb-4bit"));
        loaded.Dispose();
    }

    [TestCase("unknown-module")]
    [TestCase("wrong-shape")]
    [TestCase("missing-b")]
    [TestCase("rank-mismatch")]
    [TestCase("not-lora")]
    [TestCase("extra-tensor")]
    public void BadAdaptersGetClearErrors(string what)
    {
        using var model = TinyModels.Build(1, QuantSpec.Nf4);
        var lora = Adapted(model, 2, ["q_proj"]);
        PeftAdapter.Save(lora, _dir, "tiny");
        string cfgPath = Path.Combine(_dir, "adapter_config.json");
        var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
        void Weights(params (string Key, long[] Shape)[] tensors)
        {
            using var w = new SafetensorsWriter();
            foreach (var (k, s) in tensors) w.Add(k, new float[s[0] * s[1]], QLoraDtype.F32, s);
            w.Write(Path.Combine(_dir, "adapter_model.safetensors"));
        }
        const string q = "base_model.model.model.layers.0.self_attn.q_proj";
        string expect;
        switch (what)
        {
            case "unknown-module":
                Weights(("base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight", [4, 32]), ("base_model.model.model.layers.9.self_attn.q_proj.lora_B.weight", [32, 4]));
                expect = "\"model.layers.9.self_attn.q_proj\", which is not a linear layer of this model";
                break;
            case "wrong-shape":
                Weights((q + ".lora_A.weight", [4, 48]), (q + ".lora_B.weight", [32, 4]));
                expect = "do not fit the model's layer [out 32, in 32]";
                break;
            case "missing-b":
                Weights((q + ".lora_A.weight", [4, 32]));
                expect = "lora_B.weight missing";
                break;
            case "rank-mismatch":
                Weights((q + ".lora_A.weight", [8, 32]), (q + ".lora_B.weight", [32, 8]));
                expect = "but r is 4";
                break;
            case "not-lora":
                cfg["peft_type"] = "PREFIX_TUNING";
                File.WriteAllText(cfgPath, cfg.ToJsonString());
                expect = "only LORA adapters";
                break;
            default:
                Weights((q + ".lora_A.weight", [4, 32]), (q + ".lora_B.weight", [32, 4]), ("base_model.model.lm_head.weight", [260, 32]));
                expect = "unexpected tensor \"base_model.model.lm_head.weight\"";
                break;
        }
        using var fresh = TinyModels.Build(1, QuantSpec.Nf4);
        var e = Assert.Throws<InvalidDataException>(() => PeftAdapter.Load(fresh, _dir));
        Assert.That(e!.Message, Does.Contain(expect));
        Assert.That(fresh.modules().OfType<LoraLinear>(), Is.Empty, "nothing was changed");
    }
}
