using QLoRA.Native;
using QLoRA.Native.Interop;

namespace QLoRA.Models;

/// <summary>How the frozen linear weights are stored in memory.</summary>
public enum QuantKind
{
    /// <summary>Dense 16/32-bit (the compute dtype).</summary>
    None,

    /// <summary>4-bit NormalFloat (bitsandbytes NF4).</summary>
    Nf4,

    /// <summary>bitsandbytes FP4.</summary>
    Fp4,

    /// <summary>Symmetric absmax Int4 (the paper's baseline; no bitsandbytes checkpoint form).</summary>
    Int4,
}

/// <summary>A quantization choice: kind, block size, double quantization of the block scales.</summary>
/// <param name="Kind">None, NF4, FP4 or Int4.</param>
/// <param name="BlockSize">Elements per block scale (default 64).</param>
/// <param name="DoubleQuant">8-bit block scales (default true: 4.127 bits per parameter at block 64).</param>
public sealed record QuantSpec(QuantKind Kind, int BlockSize = 64, bool DoubleQuant = true)
{
    /// <summary>Dense weights.</summary>
    public static QuantSpec None { get; } = new(QuantKind.None);

    /// <summary>NF4 with double quantization, block 64 (QLoRA's choice).</summary>
    public static QuantSpec Nf4 { get; } = new(QuantKind.Nf4);

    /// <summary>"none", "nf4", "fp4" or "int4" (+ block size and double quantization flags).</summary>
    /// <exception cref="ArgumentException">Unknown name.</exception>
    public static QuantSpec Parse(string name, int blockSize = 64, bool doubleQuant = true) => name.ToLowerInvariant() switch
    {
        "none" or "fp32" or "bf16" or "dense" => None,
        "nf4" => new QuantSpec(QuantKind.Nf4, blockSize, doubleQuant),
        "fp4" => new QuantSpec(QuantKind.Fp4, blockSize, doubleQuant),
        "int4" => new QuantSpec(QuantKind.Int4, blockSize, doubleQuant),
        _ => throw new ArgumentException($"unknown quantization \"{name}\" (expected none, nf4, fp4 or int4)", nameof(name)),
    };

    /// <summary>The native parameters (not for <see cref="QuantKind.None"/>).</summary>
    public QuantParams ToParams() => new()
    {
        QuantType = Kind switch
        {
            QuantKind.Nf4 => QLoraQuantType.Nf4,
            QuantKind.Fp4 => QLoraQuantType.Fp4,
            QuantKind.Int4 => QLoraQuantType.Int4,
            _ => throw new InvalidOperationException("no 4-bit parameters for dense weights"),
        },
        BlockSize = BlockSize,
        DoubleQuant = DoubleQuant,
        NestedBlockSize = 256,
    };

    /// <summary>"none", "nf4+dq", "fp4", ...</summary>
    public string Name => Kind == QuantKind.None ? "none" : Linear4bit.FormatOf(ToParams());

    /// <inheritdoc/>
    public override string ToString() => Name;
}
