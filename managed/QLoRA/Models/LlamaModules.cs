using TorchSharp;
using TorchSharp.Modules;

using static TorchSharp.torch;

namespace QLoRA.Models;

/// <summary>RMSNorm: x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back (as Hugging Face does).</summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;

    /// <summary>Wraps <paramref name="weight"/> [dim] (taken over; frozen).</summary>
    public RmsNorm(Tensor weight, double eps) : base(nameof(RmsNorm))
    {
        this.weight = new Parameter(weight, requires_grad: false);
        Eps = eps;
        RegisterComponents();
    }

    /// <summary>The scale [dim].</summary>
    public Parameter Weight => weight;

    /// <summary>Epsilon.</summary>
    public double Eps { get; }

    /// <inheritdoc/>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var xf = x.dtype == ScalarType.Float32 ? x : x.to(ScalarType.Float32);
        var variance = xf.pow(2).mean([-1L], keepdim: true);
        var normed = xf * rsqrt(variance + Eps);
        var y = weight * (normed.dtype == x.dtype ? normed : normed.to(x.dtype));
        return y.MoveToOuterDisposeScope();
    }
}

/// <summary>The token embedding [vocab, dim] (<c>model.embed_tokens</c>).</summary>
public sealed class TokenEmbedding : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;

    /// <summary>Wraps <paramref name="weight"/> [vocab, dim] (taken over; frozen).</summary>
    public TokenEmbedding(Tensor weight) : base(nameof(TokenEmbedding))
    {
        this.weight = new Parameter(weight, requires_grad: false);
        RegisterComponents();
    }

    /// <summary>The table [vocab, dim].</summary>
    public Parameter Weight => weight;

    /// <inheritdoc/>
    public override Tensor forward(Tensor ids)
    {
        long vocab = weight.shape[0];
        if (ids.numel() > 0)
        {
            long lo = ids.min().item<long>(), hi = ids.max().item<long>();
            if (lo < 0 || hi >= vocab)
                throw new ArgumentOutOfRangeException(nameof(ids), $"token id {(lo < 0 ? lo : hi)} is outside the vocabulary [0, {vocab})");
        }
        using var flat = ids.reshape(-1);
        using var rows = weight.index_select(0, flat);
        long[] shape = [.. ids.shape, weight.shape[1]];
        return rows.view(shape);
    }
}

/// <summary>The output head (<c>lm_head</c>): logits = x W^T with W [vocab, dim], 16/32-bit, possibly the embedding's tensor.</summary>
public sealed class OutputHead : nn.Module<Tensor, Tensor>
{
    private readonly Parameter weight;

    /// <summary>Wraps <paramref name="weight"/> (a Parameter is shared as is: tied embeddings).</summary>
    public OutputHead(Tensor weight) : base(nameof(OutputHead))
    {
        this.weight = weight as Parameter ?? new Parameter(weight, requires_grad: false);
        RegisterComponents();
    }

    /// <summary>The weight [vocab, dim].</summary>
    public Parameter Weight => weight;

    /// <inheritdoc/>
    public override Tensor forward(Tensor x) => nn.functional.linear(x.dtype == weight.dtype ? x : x.to(weight.dtype), weight);
}

/// <summary>Precomputed RoPE angles: cos and sin [positions, head_dim / 2] in fp32 (grown on demand).</summary>
public sealed class RotaryEmbedding : IDisposable
{
    private readonly float[] _invFreq;
    private Tensor _cos;
    private Tensor _sin;

    /// <summary>Creates the tables for the config's head size, theta and scaling.</summary>
    public RotaryEmbedding(LlamaConfig config)
    {
        Style = config.RopeStyle;
        int half = config.HeadDim / 2;
        _invFreq = new float[half];
        for (int i = 0; i < half; i++)
            _invFreq[i] = (float)(1.0 / Math.Pow(config.RopeTheta, 2.0 * i / config.HeadDim));
        if (config.RopeScaling is { } s) Scale(_invFreq, s);
        Build(Math.Max(1, config.MaxPositions));
    }

    /// <summary>The pairing convention.</summary>
    public RopeStyle Style { get; }

    /// <summary>Rows currently in the tables.</summary>
    public long Length => _cos.shape[0];

    /// <summary>The inverse frequencies (after scaling).</summary>
    public IReadOnlyList<float> InverseFrequencies => _invFreq;

    [System.Diagnostics.CodeAnalysis.MemberNotNull(nameof(_cos), nameof(_sin))]
    private void Build(long positions)
    {
        using var scope = NewDisposeScope();
        var pos = arange(0, positions, 1, ScalarType.Float32);
        var inv = tensor(_invFreq);
        var angles = outer(pos, inv);
        var c = angles.cos();
        var s = angles.sin();
        _cos?.Dispose();
        _sin?.Dispose();
        _cos = c.MoveToOuterDisposeScope();
        _sin = s.MoveToOuterDisposeScope();
        _cos.DetachFromDisposeScope();
        _sin.DetachFromDisposeScope();
    }

    private static void Scale(float[] invFreq, RopeScaling s)
    {
        switch (s.Type)
        {
            case "linear":
                for (int i = 0; i < invFreq.Length; i++) invFreq[i] = (float)(invFreq[i] / s.Factor);
                break;
            case "llama3":
                // Hugging Face's _compute_llama3_parameters.
                double lowWavelen = s.OriginalMaxPositions / s.LowFreqFactor;
                double highWavelen = s.OriginalMaxPositions / s.HighFreqFactor;
                for (int i = 0; i < invFreq.Length; i++)
                {
                    double f = invFreq[i];
                    double wavelen = 2 * Math.PI / f;
                    double scaled = wavelen > lowWavelen ? f / s.Factor : f;
                    if (!(wavelen < highWavelen) && !(wavelen > lowWavelen))
                    {
                        double smooth = (s.OriginalMaxPositions / wavelen - s.LowFreqFactor) / (s.HighFreqFactor - s.LowFreqFactor);
                        scaled = (1 - smooth) * scaled / s.Factor + smooth * scaled;
                    }
                    invFreq[i] = (float)scaled;
                }
                break;
            default:
                throw new NotSupportedException($"rope_scaling type \"{s.Type}\"");
        }
    }

    /// <summary>
    /// Rotates <paramref name="x"/> [B, heads, T, head_dim] for positions start..start+T-1
    /// (or per-row positions <paramref name="positions"/> [B, T]).
    /// </summary>
    public Tensor Apply(Tensor x, long start, Tensor? positions = null)
    {
        long t = x.shape[2];
        long need = positions is null ? start + t : positions.max().item<long>() + 1;
        if (need > Length) Build(Math.Max(need, 2 * Length));
        using var scope = NewDisposeScope();
        Tensor cos, sin;
        if (positions is null)
        {
            cos = _cos.narrow(0, start, t);        // [T, half]
            sin = _sin.narrow(0, start, t);
        }
        else
        {
            cos = _cos.index_select(0, positions.reshape(-1)).view(positions.shape[0], 1, t, -1); // [B, 1, T, half]
            sin = _sin.index_select(0, positions.reshape(-1)).view(positions.shape[0], 1, t, -1);
        }
        if (x.dtype != ScalarType.Float32)
        {
            cos = cos.to(x.dtype);
            sin = sin.to(x.dtype);
        }
        Tensor y;
        if (Style == RopeStyle.Half)
        {
            var cosFull = cat([cos, cos], -1);
            var sinFull = cat([sin, sin], -1);
            long half = x.shape[3] / 2;
            var x1 = x.narrow(-1, 0, half);
            var x2 = x.narrow(-1, half, half);
            var rotated = cat([-x2, x1], -1);
            y = x * cosFull + rotated * sinFull;
        }
        else
        {
            long[] shape = x.shape;
            var pairs = x.reshape(shape[0], shape[1], shape[2], shape[3] / 2, 2);
            var a = pairs.select(-1, 0);
            var b = pairs.select(-1, 1);
            var ra = a * cos - b * sin;
            var rb = a * sin + b * cos;
            y = stack([ra, rb], -1).reshape(shape);
        }
        return y.MoveToOuterDisposeScope();
    }

    /// <summary>Frees the tables.</summary>
    public void Dispose()
    {
        _cos.Dispose();
        _sin.Dispose();
    }
}

/// <summary>
/// What every decoder layer of one forward pass shares: the RoPE tables, the start position, the attention
/// mask, and the KV cache (or none).
/// </summary>
public sealed class LayerInputs
{
    /// <summary>RoPE tables.</summary>
    public required RotaryEmbedding Rope { get; init; }

    /// <summary>Position of the first new token (the number of cached tokens).</summary>
    public long Start { get; init; }

    /// <summary>Per-token positions [B, T] (left-padded batches), or null for Start..Start+T-1.</summary>
    public Tensor? Positions { get; init; }

    /// <summary>Boolean mask [B or 1, 1, T, S] (true = may attend), or null for plain causal attention without a cache.</summary>
    public Tensor? Mask { get; init; }

    /// <summary>The KV cache to read and extend, or null.</summary>
    public KvCache? Cache { get; init; }
}

/// <summary>Something whose linear layers can be swapped (for LoRA): attention and MLP blocks.</summary>
public interface ILinearHost
{
    /// <summary>Replaces the child linear layer called <paramref name="child"/> (e.g. "q_proj") and re-registers it.</summary>
    void SetLinear(string child, nn.Module<Tensor, Tensor> module);
}

/// <summary>Multi-head / grouped-query self-attention with RoPE (<c>self_attn</c>: q_proj, k_proj, v_proj, o_proj).</summary>
public sealed class LlamaAttention : nn.Module<Tensor, LayerInputs, Tensor>, ILinearHost
{
    private nn.Module<Tensor, Tensor> q_proj;
    private nn.Module<Tensor, Tensor> k_proj;
    private nn.Module<Tensor, Tensor> v_proj;
    private nn.Module<Tensor, Tensor> o_proj;
    private readonly int _heads, _kvHeads, _headDim, _layer;
    private readonly int? _window;

    /// <summary>Creates the block from its four projections.</summary>
    public LlamaAttention(LlamaConfig config, int layer, FrozenLinear q, FrozenLinear k, FrozenLinear v, FrozenLinear o) : base(nameof(LlamaAttention))
    {
        _heads = config.NumHeads;
        _kvHeads = config.NumKvHeads;
        _headDim = config.HeadDim;
        _window = config.SlidingWindow;
        _layer = layer;
        q_proj = q;
        k_proj = k;
        v_proj = v;
        o_proj = o;
        RegisterComponents();
    }

    /// <inheritdoc/>
    public void SetLinear(string child, nn.Module<Tensor, Tensor> module)
    {
        switch (child)
        {
            case "q_proj": q_proj = module; break;
            case "k_proj": k_proj = module; break;
            case "v_proj": v_proj = module; break;
            case "o_proj": o_proj = module; break;
            default: throw new ArgumentException($"self_attn has no linear layer \"{child}\"", nameof(child));
        }
        register_module(child, null!);
        register_module(child, module);
    }

    /// <inheritdoc/>
    public override Tensor forward(Tensor x, LayerInputs inputs)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], t = x.shape[1];
        var q = q_proj.call(x).view(b, t, _heads, _headDim).transpose(1, 2);
        var k = k_proj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        var v = v_proj.call(x).view(b, t, _kvHeads, _headDim).transpose(1, 2);
        q = inputs.Rope.Apply(q, inputs.Start, inputs.Positions);
        k = inputs.Rope.Apply(k, inputs.Start, inputs.Positions);
        if (inputs.Cache is { } cache)
            (k, v) = cache.Append(_layer, k, v);
        if (_kvHeads != _heads)
        {
            int rep = _heads / _kvHeads;
            k = k.repeat_interleave(rep, 1);
            v = v.repeat_interleave(rep, 1);
        }
        // Without a mask, either nothing is cached (plain causal attention over the T new tokens) or a single new
        // token attends to everything cached (no masking needed); HiddenStates builds a mask for the other cases.
        Tensor attn = inputs.Mask is null
            ? nn.functional.scaled_dot_product_attention(q, k, v, is_casual: t > 1)
            : nn.functional.scaled_dot_product_attention(q, k, v, attn_mask: inputs.Mask);
        var merged = attn.transpose(1, 2).reshape(b, t, _heads * _headDim);
        return o_proj.call(merged).MoveToOuterDisposeScope();
    }

    /// <summary>The sliding window (Mistral), or null.</summary>
    public int? SlidingWindow => _window;
}

/// <summary>The SwiGLU MLP (<c>mlp</c>): down_proj(silu(gate_proj(x)) * up_proj(x)).</summary>
public sealed class LlamaMlp : nn.Module<Tensor, Tensor>, ILinearHost
{
    private nn.Module<Tensor, Tensor> gate_proj;
    private nn.Module<Tensor, Tensor> up_proj;
    private nn.Module<Tensor, Tensor> down_proj;

    /// <summary>Creates the block from its three projections.</summary>
    public LlamaMlp(FrozenLinear gate, FrozenLinear up, FrozenLinear down) : base(nameof(LlamaMlp))
    {
        gate_proj = gate;
        up_proj = up;
        down_proj = down;
        RegisterComponents();
    }

    /// <inheritdoc/>
    public void SetLinear(string child, nn.Module<Tensor, Tensor> module)
    {
        switch (child)
        {
            case "gate_proj": gate_proj = module; break;
            case "up_proj": up_proj = module; break;
            case "down_proj": down_proj = module; break;
            default: throw new ArgumentException($"mlp has no linear layer \"{child}\"", nameof(child));
        }
        register_module(child, null!);
        register_module(child, module);
    }

    /// <inheritdoc/>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var h = nn.functional.silu(gate_proj.call(x)) * up_proj.call(x);
        return down_proj.call(h).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// One decoder layer (<c>model.layers.N</c>): x + attn(norm(x)), then h + mlp(norm(h)). A module of its own so
/// that gradient checkpointing can wrap it.
/// </summary>
public sealed class LlamaDecoderLayer : nn.Module<Tensor, LayerInputs, Tensor>
{
    private readonly RmsNorm input_layernorm;
    private readonly LlamaAttention self_attn;
    private readonly RmsNorm post_attention_layernorm;
    private readonly LlamaMlp mlp;

    /// <summary>Creates the layer.</summary>
    public LlamaDecoderLayer(RmsNorm inputNorm, LlamaAttention attention, RmsNorm postNorm, LlamaMlp mlp) : base(nameof(LlamaDecoderLayer))
    {
        input_layernorm = inputNorm;
        self_attn = attention;
        post_attention_layernorm = postNorm;
        this.mlp = mlp;
        RegisterComponents();
    }

    /// <summary>input_layernorm.</summary>
    public RmsNorm InputLayerNorm => input_layernorm;

    /// <summary>self_attn.</summary>
    public LlamaAttention SelfAttention => self_attn;

    /// <summary>post_attention_layernorm.</summary>
    public RmsNorm PostAttentionLayerNorm => post_attention_layernorm;

    /// <summary>mlp.</summary>
    public LlamaMlp Mlp => mlp;

    /// <inheritdoc/>
    public override Tensor forward(Tensor x, LayerInputs inputs)
    {
        using var scope = NewDisposeScope();
        var h = x + self_attn.call(input_layernorm.call(x), inputs);
        var y = h + mlp.call(post_attention_layernorm.call(h));
        return y.MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Keys and values of past tokens for every layer, preallocated [B, kv_heads, capacity, head_dim] (no
/// re-concatenation per step). <see cref="Length"/> advances once per forward pass.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor[] _k;
    private readonly Tensor[] _v;

    /// <summary>Allocates a cache for <paramref name="batch"/> sequences of up to <paramref name="capacity"/> tokens.</summary>
    public KvCache(LlamaConfig config, long batch, long capacity, ScalarType dtype)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        Capacity = capacity;
        _k = new Tensor[config.NumLayers];
        _v = new Tensor[config.NumLayers];
        for (int i = 0; i < config.NumLayers; i++)
        {
            _k[i] = zeros([batch, config.NumKvHeads, capacity, config.HeadDim], dtype);
            _v[i] = zeros([batch, config.NumKvHeads, capacity, config.HeadDim], dtype);
            _k[i].DetachFromDisposeScope();
            _v[i].DetachFromDisposeScope();
        }
    }

    /// <summary>Tokens cached so far.</summary>
    public long Length { get; private set; }

    /// <summary>Maximum tokens.</summary>
    public long Capacity { get; }

    /// <summary>Bytes held.</summary>
    public long Bytes => _k.Sum(t => t.numel() * t.element_size()) * 2;

    /// <summary>Writes a layer's new keys/values [B, kv, T, D] after the cached ones and returns views of all of them.</summary>
    internal (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v)
    {
        long t = k.shape[2];
        if (Length + t > Capacity)
            throw new InvalidOperationException($"the KV cache holds {Capacity} tokens; {Length} cached + {t} new exceed it");
        using (no_grad())
        {
            _k[layer].narrow(2, Length, t).copy_(k);
            _v[layer].narrow(2, Length, t).copy_(v);
        }
        return (_k[layer].narrow(2, 0, Length + t), _v[layer].narrow(2, 0, Length + t));
    }

    /// <summary>Marks <paramref name="tokens"/> more tokens as cached (called once per forward pass, after all layers).</summary>
    internal void Advance(long tokens) => Length += tokens;

    /// <summary>Forgets everything after the first <paramref name="length"/> tokens.</summary>
    public void Truncate(long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, Length);
        Length = length;
    }

    /// <summary>Frees the buffers.</summary>
    public void Dispose()
    {
        foreach (var t in _k) t.Dispose();
        foreach (var t in _v) t.Dispose();
    }
}
