using QLoRA.Native.Interop;

namespace QLoRA.Native;

/// <summary>
/// 8-bit blockwise quantization with a 256-entry map (by default bitsandbytes' signed dynamic map):
/// absmax[b] = max |x| over block b, code = the map entry nearest to x / absmax[b].
/// </summary>
public static unsafe class Q8Blockwise
{
    /// <summary>Number of blocks (and absmax entries) for <paramref name="length"/> elements.</summary>
    public static long BlockCount(long length, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(blockSize);
        return (length + blockSize - 1) / blockSize;
    }

    /// <summary>bitsandbytes' create_dynamic_map(signed=True): 256 sorted values from -0.9929... to 1.0.</summary>
    public static float[] DynamicMap()
    {
        var map = new float[256];
        fixed (float* p = map) QLoraException.ThrowIfFailed(NativeMethods.qlora_q8_dynamic_map(p));
        return map;
    }

    /// <summary>Quantizes <paramref name="source"/> into <paramref name="codes"/> (same length) and <paramref name="absmax"/> (one per block).</summary>
    /// <param name="context">Backend and threads.</param>
    /// <param name="source">The values; all finite.</param>
    /// <param name="blockSize">Elements per block: a power of two in [32, 4096].</param>
    /// <param name="codes">Receives one map index per element.</param>
    /// <param name="absmax">Receives <see cref="BlockCount"/> scales.</param>
    /// <param name="map">256 sorted values, or empty for the signed dynamic map.</param>
    /// <exception cref="ArgumentException">A span has the wrong length.</exception>
    /// <exception cref="QLoraException">The native core rejects the block size or a value (NaN/Inf).</exception>
    public static void Quantize(QLoraContext context, ReadOnlySpan<float> source, int blockSize, Span<byte> codes, Span<float> absmax,
                                ReadOnlySpan<float> map = default)
    {
        ArgumentNullException.ThrowIfNull(context);
        Check(source.Length, blockSize, codes.Length, absmax.Length, map.Length, nameof(source), nameof(codes));
        fixed (float* x = source)
        fixed (byte* q = codes)
        fixed (float* a = absmax)
        fixed (float* m = map)
        {
            QLoraView xv = Views.Host(x, QLoraDtype.F32, 1, source.Length);
            QLoraView qv = Views.Host(q, QLoraDtype.U8, 1, codes.Length);
            QLoraView av = Views.Host(a, QLoraDtype.F32, 1, absmax.Length);
            QLoraView mv = Views.Host(m, QLoraDtype.F32, 1, 256);
            using HandleLease<QLoraContextHandle> ctx = context.Handle.Lease();
            QLoraException.ThrowIfFailed(NativeMethods.qlora_q8_quantize(ctx.Value, &xv, blockSize, map.IsEmpty ? null : &mv, &qv, &av));
        }
    }

    /// <summary>destination[i] = map[codes[i]] * absmax[i / blockSize].</summary>
    /// <exception cref="ArgumentException">A span has the wrong length.</exception>
    /// <exception cref="QLoraException">The native core rejects the block size or the map.</exception>
    public static void Dequantize(QLoraContext context, ReadOnlySpan<byte> codes, ReadOnlySpan<float> absmax, int blockSize, Span<float> destination,
                                  ReadOnlySpan<float> map = default)
    {
        ArgumentNullException.ThrowIfNull(context);
        Check(codes.Length, blockSize, destination.Length, absmax.Length, map.Length, nameof(codes), nameof(destination));
        fixed (byte* q = codes)
        fixed (float* a = absmax)
        fixed (float* o = destination)
        fixed (float* m = map)
        {
            QLoraView qv = Views.Host(q, QLoraDtype.U8, 1, codes.Length);
            QLoraView av = Views.Host(a, QLoraDtype.F32, 1, absmax.Length);
            QLoraView ov = Views.Host(o, QLoraDtype.F32, 1, destination.Length);
            QLoraView mv = Views.Host(m, QLoraDtype.F32, 1, 256);
            using HandleLease<QLoraContextHandle> ctx = context.Handle.Lease();
            QLoraException.ThrowIfFailed(NativeMethods.qlora_q8_dequantize(ctx.Value, &qv, &av, blockSize, map.IsEmpty ? null : &mv, &ov));
        }
    }

    private static void Check(int length, int blockSize, int otherLength, int absmaxLength, int mapLength, string lengthName, string otherName)
    {
        if (length == 0) throw new ArgumentException("must not be empty", lengthName);
        if (otherLength != length) throw new ArgumentException($"{otherName} has {otherLength} elements; {lengthName} has {length}", otherName);
        long blocks = BlockCount(length, blockSize);
        if (absmaxLength != blocks)
            throw new ArgumentException($"absmax has {absmaxLength} elements; {length} values in blocks of {blockSize} need {blocks}", "absmax");
        if (mapLength is not (0 or 256)) throw new ArgumentException($"map has {mapLength} elements; it must have 256 (or be empty for the dynamic map)", "map");
    }
}
