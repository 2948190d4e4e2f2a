using QLoRA.Native.Interop;

namespace QLoRA.Native;

/// <summary>
/// How a 4-bit tensor is quantized. A new instance holds the native defaults
/// (<c>qlora_quant_default_params()</c>: NF4, block 64, double quantization with nested block 256).
/// </summary>
public sealed record QuantParams
{
    private static readonly QLoraQuantParams NativeDefault = NativeMethods.qlora_quant_default_params();

    /// <summary>The native defaults.</summary>
    public static QuantParams Default { get; } = new();

    /// <summary>NF4 (NormalFloat, for normally distributed weights) or FP4.</summary>
    public QLoraQuantType QuantType { get; init; } = NativeDefault.QuantType;

    /// <summary>Elements per absmax block: a power of two in [32, 4096].</summary>
    public int BlockSize { get; init; } = NativeDefault.Blocksize;

    /// <summary>Quantize the fp32 block scales to 8 bits (bitsandbytes' compress_statistics).</summary>
    public bool DoubleQuant { get; init; } = NativeDefault.DoubleQuant != 0;

    /// <summary>Scales per second-level block (double quantization): a power of two in [32, 4096].</summary>
    public int NestedBlockSize { get; init; } = NativeDefault.NestedBlocksize;

    internal QLoraQuantParams ToNative() => new()
    {
        QuantType = QuantType,
        Blocksize = BlockSize,
        DoubleQuant = DoubleQuant ? 1 : 0,
        NestedBlocksize = NestedBlockSize,
    };
}
