using QLoRA.Models;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Reports;

/// <summary>A model the training benchmark runs: the default model, or a LLaMA-shaped configuration with random weights.</summary>
/// <param name="Key">Command-line name ("15m", "125m", "350m", "1b").</param>
/// <param name="Label">Human name, with the shape it copies.</param>
/// <param name="Config">The configuration; null for the default model (stories15M, loaded from its checkpoint).</param>
public sealed record BenchModel(string Key, string Label, LlamaConfig? Config)
{
    /// <summary>True for the real default model (stories15M).</summary>
    public bool IsDefault => Config is null;
}

/// <summary>
/// LLaMA-shaped configurations built in code with random weights, for time and memory measurements (right for
/// both, never for quality), and the closed-form LLaMA parameter count they are checked against.
/// </summary>
public static class SyntheticModels
{
    /// <summary>SmolLM-135M's shape with LLaMA-2's 32000-token vocabulary: 124.6M parameters.</summary>
    public static LlamaConfig Config125M { get; } = Make(hidden: 576, intermediate: 1536, layers: 30, heads: 9, kvHeads: 3, tied: true);

    /// <summary>SmolLM-360M's shape with a 32000-token vocabulary: 345.4M parameters.</summary>
    public static LlamaConfig Config350M { get; } = Make(hidden: 960, intermediate: 2560, layers: 32, heads: 15, kvHeads: 5, tied: true);

    /// <summary>TinyLlama-1.1B's shape (GQA 32/4 heads, untied head): 1,100,048,384 parameters.</summary>
    public static LlamaConfig Config1B => ModelsReport.SyntheticConfig1B;

    /// <summary>The benchmark's models, smallest first.</summary>
    public static IReadOnlyList<BenchModel> All { get; } =
    [
        new("15m", "stories15M (default model, real weights)", null),
        new("125m", "125M (SmolLM-135M shape, vocab 32000)", Config125M),
        new("350m", "350M (SmolLM-360M shape, vocab 32000)", Config350M),
        new("1b", "1.1B (TinyLlama-1.1B shape)", Config1B),
    ];

    /// <summary>
    /// A 1.7M-parameter LLaMA shape (2 layers, d 256, MLP 512, vocabulary 1024, untied head) for a seconds-long smoke run of the machinery
    /// (<c>--models tiny</c>, the unit tests); not part of the default suite.
    /// </summary>
    public static BenchModel Tiny { get; } = new("tiny", "tiny (2 layers, d 256; smoke test)",
        Make(hidden: 256, intermediate: 512, layers: 2, heads: 4, kvHeads: 2, tied: false, vocab: 1024, maxPositions: 512));

    /// <summary>The model called <paramref name="key"/> (one of <see cref="All"/>, or <see cref="Tiny"/>).</summary>
    /// <exception cref="ArgumentException">An unknown name (the message lists the known ones).</exception>
    public static BenchModel Find(string key) =>
        All.Append(Tiny).FirstOrDefault(m => string.Equals(m.Key, key, StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"unknown benchmark model \"{key}\" (known: {string.Join(", ", All.Append(Tiny).Select(m => m.Key))})", nameof(key));

    private static LlamaConfig Make(int hidden, int intermediate, int layers, int heads, int kvHeads, bool tied, int vocab = 32000, int maxPositions = 2048) => new LlamaConfig
    {
        VocabSize = vocab, HiddenSize = hidden, IntermediateSize = intermediate, NumLayers = layers, NumHeads = heads, NumKvHeads = kvHeads,
        HeadDim = hidden / heads, RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositions = maxPositions, TieWordEmbeddings = tied,
        BosTokenId = 1, EosTokenIds = [2], TorchDtype = "bfloat16",
    }.Validate("synthetic config");

    /// <summary>
    /// The closed-form LLaMA parameter count: V d (x2 with an untied head) + L (d (q + 2 kv) + q d + 3 d f + 2 d) + d,
    /// with q = heads x head_dim, kv = kv_heads x head_dim, f the MLP width (no biases).
    /// </summary>
    public static long ClosedFormParameterCount(LlamaConfig c)
    {
        long d = c.HiddenSize, f = c.IntermediateSize, v = c.VocabSize, q = c.QueryDim, kv = c.KvDim;
        long perLayer = d * (q + 2 * kv) + q * d + 3 * d * f + 2 * d;
        return v * d * (c.TieWordEmbeddings ? 1 : 2) + c.NumLayers * perLayer + d;
    }

    /// <summary>Parameters of the decoder's linear layers (the ones that are quantized): L (d (q + 2 kv) + q d + 3 d f).</summary>
    public static long LinearParameterCount(LlamaConfig c) =>
        Enumerable.Range(0, c.NumLayers).Sum(l => ModelLoader.LinearNames(c, l).Sum(x => x.Rows * x.Cols));

    /// <summary>
    /// Builds <paramref name="config"/> with random weights (linear weights and embeddings N(0, 0.02^2), norms 1):
    /// one fp32 matrix per linear role (q, k, v, o, gate, up, down) is drawn from a generator seeded with
    /// <paramref name="seed"/>, and every layer gets its own copy of it, quantized or converted exactly as a loader
    /// does (<see cref="ModelLoader.MakeLinear"/>); the same seed gives the same underlying weights in every format.
    /// Building holds the seven fp32 role matrices (176 MiB at 1B) beyond the model.
    /// </summary>
    public static LlamaForCausalLM Build(LlamaConfig config, QuantSpec quant, ScalarType dtype, int seed, Action<string>? log = null)
    {
        TorchRuntime.EnsureLoaded();
        var c = config;
        using var gen = new Generator((ulong)seed);
        Tensor Randn(long rows, long cols) => randn([rows, cols], ScalarType.Float32, generator: gen).mul_(0.02f);
        Tensor AsDtype(Tensor t)
        {
            if (t.dtype == dtype) return t;
            using (t) return t.to(dtype);
        }
        int d = c.HiddenSize, q = c.QueryDim, kv = c.KvDim, h = c.IntermediateSize;
        // One random fp32 matrix per role (q, k, v, o, gate, up, down), drawn once: every layer gets its own copy,
        // converted or quantized as a loader does. Drawing 1B normal values would take minutes on two cores and
        // change neither time nor memory.
        var roles = new[] { (q, d), (kv, d), (kv, d), (d, q), (h, d), (h, d), (d, h) }.Select(s => Randn(s.Item1, s.Item2)).ToArray();
        var embed = new TokenEmbedding(AsDtype(Randn(c.VocabSize, d)));
        var layers = new List<LlamaDecoderLayer>(c.NumLayers);
        try
        {
            FrozenLinear Lin(int role) =>
                ModelLoader.MakeLinear(TensorViews.RowView(roles[role]), roles[role].shape[0], roles[role].shape[1], quant, dtype);
            for (int l = 0; l < c.NumLayers; l++)
            {
                var attn = new LlamaAttention(c, l, Lin(0), Lin(1), Lin(2), Lin(3));
                var mlp = new LlamaMlp(Lin(4), Lin(5), Lin(6));
                layers.Add(new LlamaDecoderLayer(new RmsNorm(ones([d], dtype), c.RmsNormEps), attn, new RmsNorm(ones([d], dtype), c.RmsNormEps), mlp));
                if ((l + 1) % 8 == 0 || l + 1 == c.NumLayers) log?.Invoke($"  built layer {l + 1}/{c.NumLayers}");
            }
        }
        finally
        {
            foreach (var t in roles) t.Dispose();
        }
        var head = c.TieWordEmbeddings ? new OutputHead(embed.Weight) : new OutputHead(AsDtype(Randn(c.VocabSize, d)));
        var model = new LlamaForCausalLM(c, new LlamaModel(embed, layers, new RmsNorm(ones([d], dtype), c.RmsNormEps)), head, dtype);
        model.eval();
        return model;
    }
}
