using QLoRA.Models;

using TorchSharp;
using TorchSharp.Modules;

using static TorchSharp.torch;

namespace QLoRA.Lora;

/// <summary>LoRA hyper-parameters (PEFT's LoraConfig fields that matter for training and for the adapter file).</summary>
public sealed record LoraOptions
{
    /// <summary>The linear-layer names of a LLaMA decoder block (PEFT's target_modules for "all linear layers").</summary>
    public static readonly IReadOnlyList<string> AllLinear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>Rank r (the paper: 64).</summary>
    public int Rank { get; init; } = 64;

    /// <summary>lora_alpha (the paper: 16).</summary>
    public double Alpha { get; init; } = 16;

    /// <summary>Dropout on the LoRA input (the paper: 0.1 for 7B/13B, 0.05 for 33B/65B).</summary>
    public double Dropout { get; init; } = 0.05;

    /// <summary>rsLoRA: scale alpha / sqrt(r) instead of alpha / r.</summary>
    public bool UseRsLora { get; init; }

    /// <summary>
    /// The layers to adapt: names matched as PEFT does (a layer's full name equals an entry or ends with "." + entry),
    /// e.g. ["q_proj", "v_proj"]; null = every linear layer of the decoder (the paper's choice).
    /// </summary>
    public IReadOnlyList<string>? TargetModules { get; init; }

    /// <summary>The dtype of the LoRA matmuls: Float32, or BFloat16 (the fp32 A/B are cast for compute; gradients come back in fp32).</summary>
    public ScalarType ComputeDtype { get; init; } = ScalarType.Float32;

    /// <summary>The factor of B A in the effective weight.</summary>
    public double Scale => UseRsLora ? Alpha / Math.Sqrt(Rank) : Alpha / Rank;

    /// <summary>Checks the values.</summary>
    public LoraOptions Validate()
    {
        if (Rank < 1) throw new ArgumentOutOfRangeException(nameof(Rank), Rank, "the LoRA rank must be at least 1");
        if (!(Alpha > 0) || double.IsInfinity(Alpha)) throw new ArgumentOutOfRangeException(nameof(Alpha), Alpha, "lora_alpha must be a positive number");
        if (!(Dropout >= 0 && Dropout < 1)) throw new ArgumentOutOfRangeException(nameof(Dropout), Dropout, "the LoRA dropout must be in [0, 1)");
        if (ComputeDtype is not (ScalarType.Float32 or ScalarType.BFloat16))
            throw new ArgumentOutOfRangeException(nameof(ComputeDtype), ComputeDtype, "the LoRA compute dtype must be Float32 or BFloat16");
        if (TargetModules is { Count: 0 }) throw new ArgumentException("target_modules is empty (null means every linear layer)", nameof(TargetModules));
        return this;
    }
}

/// <summary>
/// A LoRA layer around a frozen linear layer (dense or native 4-bit):
/// y = base(x) + scale * dropout(x) A^T B^T, with A [r, in] and B [out, r] trainable fp32 parameters
/// (A Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in)), and B zero, as PEFT initializes them),
/// scale = alpha / r (or alpha / sqrt(r) with rsLoRA). The base layer gets no gradient; its input gradient
/// flows through the fused 4-bit backward kernel.
/// </summary>
public sealed class LoraLinear : nn.Module<Tensor, Tensor>
{
    private readonly FrozenLinear base_layer;
    private readonly Parameter lora_A;
    private readonly Parameter lora_B;

    /// <summary>Wraps <paramref name="baseLayer"/>; A is drawn from <paramref name="generator"/> (null: torch's default generator).</summary>
    public LoraLinear(FrozenLinear baseLayer, LoraOptions options, Generator? generator = null) : base(nameof(LoraLinear))
    {
        ArgumentNullException.ThrowIfNull(baseLayer);
        Options = options.Validate();
        base_layer = baseLayer;
        long r = options.Rank, inF = baseLayer.InFeatures, outF = baseLayer.OutFeatures;
        double bound = 1.0 / Math.Sqrt(inF);   // kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)) * sqrt(3/fan_in)
        // On the base's device (a dense base on a GPU); native 4-bit bases live on the host here.
        Device device = baseLayer.parameters().FirstOrDefault()?.device ?? CPU;
        using (no_grad())
        {
            var a = rand([r, inF], ScalarType.Float32, generator: generator).mul_(2 * bound).sub_(bound);
            lora_A = new Parameter(device.type == DeviceType.CPU ? a : a.to(device), requires_grad: true);
            lora_B = new Parameter(zeros([outF, r], ScalarType.Float32, device: device), requires_grad: true);
        }
        RegisterComponents();
    }

    /// <summary>The options it was made with.</summary>
    public LoraOptions Options { get; }

    /// <summary>The frozen layer.</summary>
    public FrozenLinear BaseLayer => base_layer;

    /// <summary>A [r, in].</summary>
    public Parameter A => lora_A;

    /// <summary>B [out, r].</summary>
    public Parameter B => lora_B;

    /// <summary>in_features.</summary>
    public long InFeatures => base_layer.InFeatures;

    /// <summary>out_features.</summary>
    public long OutFeatures => base_layer.OutFeatures;

    /// <inheritdoc/>
    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var y = base_layer.call(x);
        var h = Options.Dropout > 0 ? nn.functional.dropout(x, Options.Dropout, training) : x;
        var a = lora_A;
        var b = lora_B;
        ScalarType dt = Options.ComputeDtype;
        if (h.dtype != dt) h = h.to(dt);
        Tensor aC = a.dtype == dt ? a : a.to(dt), bC = b.dtype == dt ? b : b.to(dt);
        var delta = nn.functional.linear(nn.functional.linear(h, aC), bC).mul(Options.Scale);
        if (delta.dtype != y.dtype) delta = delta.to(y.dtype);
        return y.add(delta).MoveToOuterDisposeScope();
    }

    /// <summary>scale * B A [out, in] in fp32 (no gradient).</summary>
    public Tensor DeltaWeight()
    {
        using var _ = no_grad();
        using var ba = lora_B.detach().matmul(lora_A.detach());
        return ba.mul(Options.Scale);
    }

    /// <summary>The effective weight W + scale * B A [out, in] in fp32 (4-bit bases are dequantized).</summary>
    public Tensor MergedWeight()
    {
        using var _ = no_grad();
        using var w = base_layer.DequantizedWeight(ScalarType.Float32);
        using var d = DeltaWeight();
        return w.add(d);
    }
}
