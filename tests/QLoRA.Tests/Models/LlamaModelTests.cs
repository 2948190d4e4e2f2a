using QLoRA.Models;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Tests.Models;

/// <summary>The TorchSharp decoder against an independent float64 llama2.c forward pass, on real and synthetic weights.</summary>
public class LlamaModelTests
{
    [OneTimeSetUp]
    public void Load() => TorchRuntime.EnsureLoaded();

    private static void AssertLogitsClose(Tensor actual, double[][] expect, double tolerance, string what)
    {
        var a = actual.to(ScalarType.Float32).contiguous().data<float>().ToArray();
        int vocab = expect[0].Length;
        Assert.That(a.Length, Is.EqualTo(expect.Length * vocab), what + ": element count");
        double maxErr = 0, maxMag = 0;
        for (int t = 0; t < expect.Length; t++)
            for (int v = 0; v < vocab; v++)
            {
                maxErr = Math.Max(maxErr, Math.Abs(a[t * vocab + v] - expect[t][v]));
                maxMag = Math.Max(maxMag, Math.Abs(expect[t][v]));
            }
        Assert.That(maxErr, Is.LessThan(tolerance * maxMag), $"{what}: max |logit error| {maxErr:E3} vs max |logit| {maxMag:F2}");
        for (int t = 0; t < expect.Length; t++)
        {
            int argA = 0, argE = 0;
            for (int v = 1; v < vocab; v++)
            {
                if (a[t * vocab + v] > a[t * vocab + argA]) argA = v;
                if (expect[t][v] > expect[t][argE]) argE = v;
            }
            Assert.That(argA, Is.EqualTo(argE), $"{what}: argmax at position {t}");
        }
    }

    [Test]
    public void Stories15MLogitsMatchTheFloat64Oracle()
    {
        var m = TestModels.Stories(QuantSpec.None);
        var tok = m.RequireTokenizer();
        var ids = tok.Encode("Once upon a time, there was a little girl named Lily. She loved to play outside.");
        Assert.That(ids.Count, Is.GreaterThan(10));
        var oracle = new Llama2cOracle(TestModels.Files.ModelPath).Logits(ids);
        using var _ = no_grad();
        using var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Count]);
        using var logits = m.Model.forward(input);
        Assert.That(logits.shape, Is.EqualTo(new long[] { 1, ids.Count, 32000 }));
        AssertLogitsClose(logits, oracle, 1e-4, "stories15M fp32");
    }

    [Test]
    public void Nf4ModelStaysCloseToFp32AndDiffersFromIt()
    {
        var fp = TestModels.Stories(QuantSpec.None);
        var nf = TestModels.Stories(QuantSpec.Nf4);
        Assert.That(nf.Model.LinearLayers().All(l => l.Layer is Linear4bit && l.Layer.Format == "nf4+dq"));
        var ids = fp.RequireTokenizer().Encode("The little dog ran to the park and");
        using var _ = no_grad();
        using var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Count]);
        using var a = fp.Model.forward(input);
        using var b = nf.Model.forward(input);
        double diff = (a - b).abs().max().item<float>();
        double mag = a.abs().max().item<float>();
        Assert.That(diff, Is.GreaterThan(1e-3), "NF4 weights must change the logits");
        Assert.That(diff, Is.LessThan(0.25 * mag), $"NF4 logits drift {diff} vs max {mag}");
        // The next-token distributions stay close: KL(fp32 || nf4) per position is small.
        var p = a.log_softmax(-1);
        var q = b.log_softmax(-1);
        double kl = (p.exp() * (p - q)).sum(-1).mean().item<float>();
        Assert.That(kl, Is.LessThan(0.1), "mean KL(fp32 || nf4) per token");
    }

    [Test]
    public void GqaAndSeparateHeadMatchTheOracle()
    {
        // A synthetic llama2.c checkpoint with 4 query heads sharing 2 kv heads and its own classifier.
        string dir = TestModels.TempDir("gqa");
        try
        {
            string path = Path.Combine(dir, "model.bin");
            SyntheticLlama2c.Write(path, dim: 64, hidden: 96, layers: 2, heads: 4, kvHeads: 2, vocab: 300, seq: 64, shared: false, seed: 3);
            using var m = ModelLoader.LoadLlama2c(path, new ModelLoadOptions { Quant = QuantSpec.None, LoadTokenizer = false });
            Assert.That(m.Model.Config.NumKvHeads, Is.EqualTo(2));
            Assert.That(m.Model.Config.TieWordEmbeddings, Is.False);
            int[] ids = [1, 17, 250, 3, 99, 42, 7, 8, 200, 299];
            var oracle = new Llama2cOracle(path).Logits(ids);
            using var _ = no_grad();
            using var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]);
            using var logits = m.Model.forward(input);
            AssertLogitsClose(logits, oracle, 1e-4, "synthetic GQA");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void Bf16ComputeTracksFp32()
    {
        var files = TestModels.Files;
        using var bf = ModelLoader.LoadLlama2c(files.ModelPath, new ModelLoadOptions { Quant = QuantSpec.None, ComputeDtype = ScalarType.BFloat16, TokenizerPath = files.TokenizerPath });
        var fp = TestModels.Stories(QuantSpec.None);
        var ids = fp.RequireTokenizer().Encode("Tom and his mom went to the store.");
        using var _ = no_grad();
        using var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Count]);
        using var a = fp.Model.forward(input);
        using var b = bf.Model.forward(input);
        Assert.That(b.dtype, Is.EqualTo(ScalarType.Float32), "logits come back as fp32");
        var p = a.log_softmax(-1);
        var q = b.log_softmax(-1);
        double kl = (p.exp() * (p - q)).sum(-1).mean().item<float>();
        Assert.That(kl, Is.LessThan(0.05), "mean KL(fp32 || bf16)");
        Assert.That(kl, Is.GreaterThan(0), "bf16 must actually round");
    }

    [Test]
    public void Llama3RopeScalingKeepsHighFrequenciesAndStretchesLowOnes()
    {
        // Llama 3.1's config: head_dim 128, theta 500000, factor 8, low 1, high 4, original context 8192.
        string json = """
            {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128256, "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
             "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": false,
             "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192}}
            """;
        var config = LlamaConfig.FromHuggingFaceJson(json, "config.json") with { MaxPositions = 16 };
        Assert.That(config.HeadDim, Is.EqualTo(128));
        Assert.That(config.NumKvHeads, Is.EqualTo(8));
        using var rope = new RotaryEmbedding(config);
        var inv = rope.InverseFrequencies;
        for (int i = 0; i < 64; i++)
        {
            double plain = 1.0 / Math.Pow(500000, 2.0 * i / 128);
            double wavelen = 2 * Math.PI / plain;
            if (wavelen < 8192 / 4.0) Assert.That(inv[i], Is.EqualTo(plain).Within(1e-6 * plain), $"high frequency {i} unchanged");
            else if (wavelen > 8192 / 1.0) Assert.That(inv[i], Is.EqualTo(plain / 8).Within(1e-6 * plain), $"low frequency {i} divided by the factor");
            else Assert.That(inv[i], Is.InRange(plain / 8 * 0.999999, plain * 1.000001), $"medium frequency {i} between the two");
        }
        int low = Enumerable.Range(0, 64).Count(i => 2 * Math.PI * Math.Pow(500000, 2.0 * i / 128) > 8192);
        int high = Enumerable.Range(0, 64).Count(i => 2 * Math.PI * Math.Pow(500000, 2.0 * i / 128) < 2048);
        Assert.That(low, Is.GreaterThan(10), "the low-frequency branch is exercised");
        Assert.That(high, Is.GreaterThan(10), "the high-frequency branch is exercised");
        Assert.That(64 - low - high, Is.GreaterThan(0), "the smoothed branch is exercised");
    }

    [Test]
    public void PaddingMaskAndPositionsGiveTheUnpaddedLogits()
    {
        var m = TestModels.Stories(QuantSpec.None);
        var tok = m.RequireTokenizer();
        var ids = tok.Encode("One day, a cat sat on a mat.");
        using var _ = no_grad();
        using var plain = m.Model.forward(tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Count]));
        // Left-pad by 3 with an arbitrary id: the mask hides them and positions restart at the first real token.
        long[] padded = [.. Enumerable.Repeat(5L, 3), .. ids.Select(i => (long)i)];
        long[] mask = [0, 0, 0, .. ids.Select(_ => 1L)];
        using var out2 = m.Model.Forward(tensor(padded, [1, padded.Length]), tensor(mask, [1, mask.Length]));
        var real = out2.narrow(1, 3, ids.Count);
        double diff = (real - plain).abs().max().item<float>();
        Assert.That(diff, Is.LessThan(1e-3), "left-padded logits vs unpadded");
    }

    [Test]
    public void LinearLayersHaveHuggingFaceNamesAndCanBeReplaced()
    {
        string dir = TestModels.TempDir("replace");
        try
        {
            string path = Path.Combine(dir, "model.bin");
            SyntheticLlama2c.Write(path, dim: 32, hidden: 48, layers: 2, heads: 2, kvHeads: 2, vocab: 64, seq: 32, shared: true, seed: 5);
            using var m = ModelLoader.LoadLlama2c(path, new ModelLoadOptions { Quant = QuantSpec.Nf4, LoadTokenizer = false });
            var names = m.Model.LinearLayers().Select(l => l.Name).ToList();
            Assert.That(names, Has.Count.EqualTo(14));
            Assert.That(names, Does.Contain("model.layers.0.self_attn.q_proj"));
            Assert.That(names, Does.Contain("model.layers.1.mlp.down_proj"));
            var moduleNames = m.Model.named_modules().Select(x => x.name).ToList();
            Assert.That(moduleNames, Is.SupersetOf(new[] { "model.embed_tokens", "model.layers.0.input_layernorm", "model.layers.0.post_attention_layernorm", "model.norm", "lm_head" }));

            using var _ = no_grad();
            using var input = tensor(new long[] { 1, 5, 9, 3 }, [1, 4]);
            using var before = m.Model.forward(input);
            // Replace one projection by a wrapper that doubles it: the output must change, and the name must now resolve to the wrapper.
            string target = "model.layers.1.mlp.up_proj";
            var old = (FrozenLinear)m.Model.named_modules().First(x => x.name == target).module;
            var wrapper = new Doubler(old);
            var returned = m.Model.ReplaceLinear(target, wrapper);
            Assert.That(returned, Is.SameAs(old));
            Assert.That(m.Model.named_modules().First(x => x.name == target).module, Is.SameAs(wrapper));
            Assert.That(m.Model.LinearLayers().Select(l => l.Name), Does.Contain(target + ".inner"));
            using var after = m.Model.forward(input);
            Assert.That((after - before).abs().max().item<float>(), Is.GreaterThan(1e-4));
            Assert.Throws<ArgumentException>(() => m.Model.ReplaceLinear("model.layers.9.mlp.up_proj", wrapper));
            Assert.Throws<ArgumentException>(() => m.Model.ReplaceLinear("model.norm", wrapper));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    private sealed class Doubler : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> inner;

        public Doubler(nn.Module<Tensor, Tensor> inner) : base("Doubler")
        {
            this.inner = inner;
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => inner.call(x) * 2;
    }
}

/// <summary>Writes random llama2.c checkpoints (legacy format, FORMATS.md) for tests.</summary>
internal static class SyntheticLlama2c
{
    public static void Write(string path, int dim, int hidden, int layers, int heads, int kvHeads, int vocab, int seq, bool shared, int seed)
    {
        var rng = new Random(seed);
        int kvDim = dim / heads * kvHeads;
        using var w = new BinaryWriter(File.Create(path));
        foreach (int v in new[] { dim, hidden, layers, heads, kvHeads, shared ? vocab : -vocab, seq }) w.Write(v);
        void Floats(long n, double scale, double offset = 0)
        {
            for (long i = 0; i < n; i++) w.Write((float)(offset + scale * (rng.NextDouble() * 2 - 1)));
        }
        Floats((long)vocab * dim, 1.0);
        Floats((long)layers * dim, 0.2, 1.0);
        Floats((long)layers * dim * dim, 1.0 / Math.Sqrt(dim));
        Floats((long)layers * kvDim * dim, 1.0 / Math.Sqrt(dim));
        Floats((long)layers * kvDim * dim, 1.0 / Math.Sqrt(dim));
        Floats((long)layers * dim * dim, 1.0 / Math.Sqrt(dim));
        Floats((long)layers * dim, 0.2, 1.0);
        Floats((long)layers * hidden * dim, 1.0 / Math.Sqrt(dim));
        Floats((long)layers * dim * hidden, 1.0 / Math.Sqrt(hidden));
        Floats((long)layers * hidden * dim, 1.0 / Math.Sqrt(dim));
        Floats(dim, 0.2, 1.0);
        Floats((long)seq * (dim / heads) / 2 * 2, 1.0); // legacy RoPE tables (ignored by readers)
        if (!shared) Floats((long)vocab * dim, 1.0 / Math.Sqrt(dim));
    }
}
