using QLoRA.Data;
using QLoRA.Models;
using QLoRA.Tokenization;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Tests.Training;

/// <summary>Small random LLaMA models and a byte-level tokenizer for fast training tests.</summary>
internal static class TinyModels
{
    public const int Vocab = 260;   // 0 pad/unk, 1 BOS, 2 EOS, 3..258 bytes

    public static LlamaConfig Config(RopeStyle rope = RopeStyle.Half, int dim = 32, int layers = 2, int heads = 4, int kvHeads = 2) => new LlamaConfig
    {
        VocabSize = Vocab, HiddenSize = dim, IntermediateSize = 2 * dim, NumLayers = layers, NumHeads = heads, NumKvHeads = kvHeads,
        HeadDim = dim / heads, RmsNormEps = 1e-5, RopeTheta = 10000, RopeStyle = rope, MaxPositions = 128,
        TieWordEmbeddings = false, BosTokenId = 1, EosTokenIds = [2],
    }.Validate("tiny");

    /// <summary>
    /// A random model (weights ~ N(0, 0.2^2)); the same seed gives the same weights. With
    /// <paramref name="asHuggingFace"/> the same weights in Hugging Face convention: q/k rows permuted to
    /// rotate-half order and RoPE rotating halves, which computes the same function as the adjacent-pair model.
    /// </summary>
    public static LlamaForCausalLM Build(int seed, QuantSpec quant, ScalarType dtype = ScalarType.Float32, RopeStyle rope = RopeStyle.Half,
                                         bool asHuggingFace = false, int dim = 32)
    {
        TorchRuntime.EnsureLoaded();
        var c = Config(asHuggingFace ? RopeStyle.Half : rope, dim);
        using var gen = new Generator((ulong)seed);
        Tensor R(params long[] shape) => randn(shape, ScalarType.Float32, generator: gen).mul_(0.2f);
        FrozenLinear Lin(long rows, long cols, int permuteHeads = 0)
        {
            using var w0 = R(rows, cols);
            using var idx = tensor(QLoRA.Adapters.PeftAdapter.RotateHalfRowOrder(Math.Max(permuteHeads, 1), (int)rows / Math.Max(permuteHeads, 1)), ScalarType.Int64);
            using var w = asHuggingFace && permuteHeads > 0 ? w0.index_select(0, idx) : w0.alias();
            return ModelLoader.MakeLinear(TensorViews.RowView(w), rows, cols, quant, dtype);
        }
        Tensor Norm() => ones([c.HiddenSize], dtype).add_(R(c.HiddenSize).mul_(0.5f).to(dtype));
        int d = c.HiddenSize, kv = c.KvDim, h = c.IntermediateSize;
        var embed = new TokenEmbedding(R(c.VocabSize, d).mul_(5f).to(dtype));
        var layers = new List<LlamaDecoderLayer>();
        for (int l = 0; l < c.NumLayers; l++)
        {
            var attn = new LlamaAttention(c, l, Lin(d, d, c.NumHeads), Lin(kv, d, c.NumKvHeads), Lin(kv, d), Lin(d, d));
            var mlp = new LlamaMlp(Lin(h, d), Lin(h, d), Lin(d, h));
            layers.Add(new LlamaDecoderLayer(new RmsNorm(Norm(), c.RmsNormEps), attn, new RmsNorm(Norm(), c.RmsNormEps), mlp));
        }
        var model = new LlamaForCausalLM(c, new LlamaModel(embed, layers, new RmsNorm(Norm(), c.RmsNormEps)), new OutputHead(R(c.VocabSize, d).to(dtype)), dtype);
        model.eval();
        return model;
    }
}

/// <summary>Bytes as tokens: id = byte + 3; BOS 1, EOS 2. Chats as "role: content\n" with assistant turns trained.</summary>
internal sealed class ByteEncoder : ITokenEncoder
{
    public IReadOnlyList<int> Encode(string text) => System.Text.Encoding.UTF8.GetBytes(text).Select(b => b + 3).ToList();

    public int? BosId => 1;

    public int EosId => 2;

    public (int[] Ids, bool[] Assistant) EncodeChat(IReadOnlyList<ChatMessage> messages)
    {
        var ids = new List<int> { 1 };
        var train = new List<bool> { false };
        foreach (var m in messages)
        {
            var head = Encode(m.Role + ": ");
            ids.AddRange(head);
            train.AddRange(head.Select(_ => false));
            var body = Encode(m.Content).Append(2).ToList();
            ids.AddRange(body);
            train.AddRange(body.Select(_ => m.Role == "assistant"));
        }
        return ([.. ids], [.. train]);
    }
}
