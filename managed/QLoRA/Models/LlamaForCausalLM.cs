using TorchSharp;
using TorchSharp.Modules;

using static TorchSharp.torch;

namespace QLoRA.Models;

/// <summary>The decoder stack (<c>model</c>): embed_tokens, layers.N, norm.</summary>
public sealed class LlamaModel : nn.Module<Tensor, LayerInputs, Tensor>
{
    private readonly TokenEmbedding embed_tokens;
    private readonly ModuleList<LlamaDecoderLayer> layers;
    private readonly RmsNorm norm;

    /// <summary>Creates the stack.</summary>
    public LlamaModel(TokenEmbedding embedTokens, IEnumerable<LlamaDecoderLayer> layers, RmsNorm norm) : base(nameof(LlamaModel))
    {
        embed_tokens = embedTokens;
        this.layers = new ModuleList<LlamaDecoderLayer>(layers.ToArray());
        this.norm = norm;
        RegisterComponents();
    }

    /// <summary>embed_tokens.</summary>
    public TokenEmbedding EmbedTokens => embed_tokens;

    /// <summary>layers.</summary>
    public IReadOnlyList<LlamaDecoderLayer> Layers => layers.ToList();

    /// <summary>norm.</summary>
    public RmsNorm Norm => norm;

    /// <summary>
    /// Replaces how each decoder layer is called (e.g. by a gradient-checkpointing wrapper): the function gets
    /// the layer, its input and the shared inputs and returns the layer's output. Null restores the plain call.
    /// </summary>
    public Func<LlamaDecoderLayer, Tensor, LayerInputs, Tensor>? LayerRunner { get; set; }

    /// <summary>Final hidden states [B, T, dim] (after the last norm) for token ids [B, T].</summary>
    public override Tensor forward(Tensor ids, LayerInputs inputs)
    {
        using var scope = NewDisposeScope();
        var h = embed_tokens.call(ids);
        foreach (var layer in layers)
            h = LayerRunner is { } run ? run(layer, h, inputs) : layer.call(h, inputs);
        return norm.call(h).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// A LLaMA-family causal language model (LLaMA 1/2/3, Mistral, TinyLlama, SmolLM, llama2.c) in TorchSharp, with
/// Hugging Face module names (<c>model.embed_tokens</c>, <c>model.layers.N.self_attn.q_proj</c>, ...,
/// <c>model.norm</c>, <c>lm_head</c>). Every linear layer of the decoder is a <see cref="FrozenLinear"/>
/// (dense or native 4-bit); embeddings, norms and the head stay 16/32-bit.
/// </summary>
/// <remarks>
/// <see cref="nn.Module{T, TResult}.forward"/> maps token ids [B, T] to fp32 logits [B, T, vocab] with causal
/// attention; <see cref="Forward"/> adds a padding mask and a KV cache. LoRA wraps layers through
/// <see cref="LinearLayers"/> and <see cref="ReplaceLinear"/>.
/// </remarks>
public sealed class LlamaForCausalLM : nn.Module<Tensor, Tensor>
{
    private readonly LlamaModel model;
    private readonly OutputHead lm_head;
    private readonly RotaryEmbedding _rope;

    /// <summary>Assembles the model from its parts (see <see cref="ModelLoader"/> for loading one).</summary>
    public LlamaForCausalLM(LlamaConfig config, LlamaModel model, OutputHead lmHead, ScalarType computeDtype) : base(nameof(LlamaForCausalLM))
    {
        Config = config;
        ComputeDtype = computeDtype;
        this.model = model;
        lm_head = lmHead;
        _rope = new RotaryEmbedding(config);
        RegisterComponents();
    }

    /// <summary>Shapes and hyper-parameters.</summary>
    public LlamaConfig Config { get; }

    /// <summary>Activation dtype: Float32 or BFloat16.</summary>
    public ScalarType ComputeDtype { get; }

    /// <summary>The decoder stack (<c>model</c>).</summary>
    public LlamaModel Model => model;

    /// <summary>The output head (<c>lm_head</c>).</summary>
    public OutputHead LmHead => lm_head;

    /// <summary>RoPE tables.</summary>
    public RotaryEmbedding Rope => _rope;

    /// <summary>fp32 logits [B, T, vocab] of token ids [B, T] (causal attention, no padding, no cache).</summary>
    public override Tensor forward(Tensor ids) => Forward(ids);

    /// <summary>
    /// fp32 logits [B, T, vocab].
    /// </summary>
    /// <param name="ids">Token ids [B, T] (int64).</param>
    /// <param name="attentionMask">[B, S] with 1 for real tokens and 0 for padding, S = cached + T tokens (null: all real).
    /// With left padding, positions count real tokens only, as Hugging Face does.</param>
    /// <param name="cache">KV cache to read and extend (inference only), or null.</param>
    /// <param name="lastTokenOnly">Return logits of the last position only ([B, 1, vocab]).</param>
    public Tensor Forward(Tensor ids, Tensor? attentionMask = null, KvCache? cache = null, bool lastTokenOnly = false)
    {
        using var scope = NewDisposeScope();
        var h = HiddenStates(ids, attentionMask, cache);
        if (lastTokenOnly) h = h.narrow(1, h.shape[1] - 1, 1);
        var logits = lm_head.call(h);
        if (logits.dtype != ScalarType.Float32) logits = logits.to(ScalarType.Float32);
        return logits.MoveToOuterDisposeScope();
    }

    /// <summary>Final hidden states [B, T, dim] (after <c>model.norm</c>, before <c>lm_head</c>); arguments as <see cref="Forward"/>.</summary>
    public Tensor HiddenStates(Tensor ids, Tensor? attentionMask = null, KvCache? cache = null)
    {
        if (ids.dim() != 2) throw new ArgumentException($"input ids must be [batch, tokens], got [{string.Join(", ", ids.shape)}]", nameof(ids));
        if (ids.dtype != ScalarType.Int64) ids = ids.to(ScalarType.Int64);
        using var scope = NewDisposeScope();
        long b = ids.shape[0], t = ids.shape[1];
        long past = cache?.Length ?? 0;
        long total = past + t;
        if (attentionMask is not null && (attentionMask.dim() != 2 || attentionMask.shape[0] != b || attentionMask.shape[1] != total))
            throw new ArgumentException($"attention mask must be [{b}, {total}] (cached + new tokens), got [{string.Join(", ", attentionMask.shape)}]", nameof(attentionMask));

        Tensor? positions = null;
        Tensor? mask = null;
        int? window = Config.SlidingWindow is { } w && total > w ? w : null;
        if (attentionMask is not null || (cache is not null && t > 1 && past > 0) || window is not null)
        {
            var keyPos = arange(0, total, 1, ScalarType.Int64);                 // [S]
            var queryPos = arange(past, total, 1, ScalarType.Int64);            // [T]
            var allowed = keyPos.unsqueeze(0) <= queryPos.unsqueeze(1);         // [T, S] causal
            if (window is { } win) allowed = allowed & (keyPos.unsqueeze(0) > (queryPos.unsqueeze(1) - win));
            allowed = allowed.unsqueeze(0).unsqueeze(0);                        // [1, 1, T, S]
            if (attentionMask is not null)
            {
                var real = attentionMask.to(ScalarType.Bool);                    // [B, S]
                allowed = allowed & real.unsqueeze(1).unsqueeze(1);             // [B, 1, T, S]
                // Positions count real tokens (left padding starts the sequence at 0).
                var cum = attentionMask.to(ScalarType.Int64).cumsum(1) - 1;
                positions = cum.narrow(1, past, t).clamp_min(0);
                // A padding query with no visible key would give NaN; let it see everything (its output is ignored).
                var none = allowed.any(-1, keepdim: true).logical_not();
                allowed = allowed | none;
            }
            mask = allowed;
        }
        var inputs = new LayerInputs { Rope = _rope, Start = past, Positions = positions, Mask = mask, Cache = cache };
        var h = model.call(ids, inputs);
        cache?.Advance(t);
        return h.MoveToOuterDisposeScope();
    }

    /// <summary>A KV cache sized for this model.</summary>
    public KvCache CreateCache(long batch, long capacity) => new(Config, batch, capacity, ComputeDtype);

    /// <summary>Every frozen linear layer with its Hugging Face module name (e.g. "model.layers.0.self_attn.q_proj").</summary>
    public IEnumerable<(string Name, FrozenLinear Layer)> LinearLayers()
    {
        foreach (var (name, module) in named_modules())
            if (module is FrozenLinear f) yield return (name, f);
    }

    /// <summary>
    /// Turns 8-bit activations on or off in every 4-bit layer (<see cref="Linear4bit.Int8Activations"/>, inference
    /// only); returns how many layers it set.
    /// </summary>
    public int SetInt8Activations(bool on)
    {
        int n = 0;
        foreach (var (_, module) in named_modules())
            if (module is Linear4bit l)
            {
                l.Int8Activations = on;
                n++;
            }
        return n;
    }

    /// <summary>
    /// Replaces the linear layer called <paramref name="name"/> (a name from <see cref="LinearLayers"/>) by
    /// <paramref name="replacement"/> (e.g. a LoRA wrapper holding the frozen layer): the parent block calls and
    /// registers the replacement under the same name from now on. Returns the module that was there.
    /// </summary>
    /// <exception cref="ArgumentException">No replaceable linear layer has that name.</exception>
    public nn.Module<Tensor, Tensor> ReplaceLinear(string name, nn.Module<Tensor, Tensor> replacement)
    {
        ArgumentNullException.ThrowIfNull(replacement);
        int dot = name.LastIndexOf('.');
        if (dot <= 0) throw new ArgumentException($"\"{name}\" is not a linear layer of a decoder block", nameof(name));
        string parentName = name[..dot], child = name[(dot + 1)..];
        var modules = named_modules().ToDictionary(m => m.name, m => m.module);
        if (!modules.TryGetValue(parentName, out var parent) || parent is not ILinearHost host)
            throw new ArgumentException($"\"{name}\": \"{parentName}\" is not an attention or MLP block of this model", nameof(name));
        if (!modules.TryGetValue(name, out var old) || old is not nn.Module<Tensor, Tensor> previous)
            throw new ArgumentException($"\"{name}\" is not a linear layer of this model", nameof(name));
        host.SetLinear(child, replacement);
        return previous;
    }

    /// <summary>Bytes of all weights: frozen linear layers (4-bit or dense), embeddings, norms and head (tied counted once).</summary>
    public long WeightBytes() => Count(l => l.StorageBytes, p => p.numel() * p.element_size());

    /// <summary>Parameters of the decoder's linear layers plus embeddings, norms and head (tied counted once).</summary>
    public long ParameterCount() => Count(l => l.InFeatures * l.OutFeatures, p => p.numel());

    private long Count(Func<FrozenLinear, long> linear, Func<Parameter, long> other)
    {
        var seen = new HashSet<IntPtr>();
        long total = 0;
        foreach (var (_, layer) in LinearLayers())
        {
            total += linear(layer);
            if (layer is DenseLinear d) seen.Add(TensorViews.DataPointer(d.Weight));
        }
        foreach (var (_, p) in named_parameters())
            if (seen.Add(TensorViews.DataPointer(p))) total += other(p);
        return total;
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing) _rope.Dispose();
        base.Dispose(disposing);
    }
}
