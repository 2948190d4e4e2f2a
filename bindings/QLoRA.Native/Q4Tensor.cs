using System.Runtime.InteropServices;
using QLoRA.Native.Interop;

namespace QLoRA.Native;

/// <summary>What a 4-bit tensor holds (<c>qlora_q4_info</c>).</summary>
public sealed record Q4TensorInfo
{
    internal Q4TensorInfo(in QLoraQ4Info i)
    {
        Rows = i.Rows;
        Cols = i.Cols;
        ElementCount = i.Numel;
        Params = new QuantParams
        {
            QuantType = i.QuantType,
            BlockSize = i.Blocksize,
            DoubleQuant = i.DoubleQuant != 0,
            NestedBlockSize = i.NestedBlocksize,
        };
        BlockCount = i.NBlocks;
        NestedBlockCount = i.NNestedBlocks;
        NestedOffset = i.NestedOffset;
        OriginalDtype = i.OrigDtype;
        Device = i.Device;
        PackedBytes = i.PackedBytes;
        StorageBytes = i.StorageBytes;
    }

    /// <summary>Rows (out_features).</summary>
    public long Rows { get; }

    /// <summary>Columns (in_features).</summary>
    public long Cols { get; }

    /// <summary>Rows x Cols.</summary>
    public long ElementCount { get; }

    /// <summary>How the tensor was quantized (NestedBlockSize is 0 without double quantization).</summary>
    public QuantParams Params { get; }

    /// <summary>ceil(ElementCount / BlockSize).</summary>
    public long BlockCount { get; }

    /// <summary>ceil(BlockCount / NestedBlockSize) with double quantization, else 0.</summary>
    public long NestedBlockCount { get; }

    /// <summary>Mean of the fp32 block scales, added back when decoding them (double quantization only).</summary>
    public float NestedOffset { get; }

    /// <summary>The element type the tensor was quantized from.</summary>
    public QLoraDtype OriginalDtype { get; }

    /// <summary><see cref="QLoraConstants.DeviceHost"/> or a CUDA device ordinal.</summary>
    public int Device { get; }

    /// <summary>Bytes of packed nibbles: (ElementCount + 1) / 2.</summary>
    public long PackedBytes { get; }

    /// <summary>All bytes of the quantized form: nibbles, scales, nested scales and offset.</summary>
    public long StorageBytes { get; }

    /// <summary>StorageBytes * 8 / ElementCount: 4.127 for NF4 with double quantization at block 64, 4.5 without.</summary>
    public double BitsPerParameter => StorageBytes * 8.0 / ElementCount;
}

/// <summary>
/// The raw parts of a 4-bit tensor in bitsandbytes' checkpoint layout, as spans (no copies):
/// what <see cref="Q4Tensor.FromParts(QLoraContext, long, long, QuantParams, QLoraDtype, Q4PartsView)"/>
/// reads and <see cref="Q4Tensor.AcquireParts"/> exposes. With double quantization, QAbsmax,
/// NestedAbsmax, NestedCode and NestedOffset are used and Absmax is empty; without it only Absmax.
/// </summary>
public readonly ref struct Q4PartsView
{
    /// <summary>[(n + 1) / 2] packed nibbles, the even element in the high nibble.</summary>
    public ReadOnlySpan<byte> Packed { get; init; }

    /// <summary>[blocks] fp32 block scales (no double quantization).</summary>
    public ReadOnlySpan<float> Absmax { get; init; }

    /// <summary>[blocks] 8-bit block scales (double quantization).</summary>
    public ReadOnlySpan<byte> QAbsmax { get; init; }

    /// <summary>[nested blocks] fp32 second-level scales (double quantization).</summary>
    public ReadOnlySpan<float> NestedAbsmax { get; init; }

    /// <summary>[16] the 4-bit code table (quant_map).</summary>
    public ReadOnlySpan<float> Code { get; init; }

    /// <summary>[256] the 8-bit map of the scales (nested_quant_map, double quantization).</summary>
    public ReadOnlySpan<float> NestedCode { get; init; }

    /// <summary>Offset added to the decoded scales (double quantization).</summary>
    public float NestedOffset { get; init; }
}

/// <summary>A managed copy of a 4-bit tensor's parts, with its shape and parameters (see <see cref="Q4PartsView"/>).</summary>
public sealed record Q4Parts(
    long Rows,
    long Cols,
    QuantParams Params,
    QLoraDtype OriginalDtype,
    byte[] Packed,
    float[] Code,
    float[]? Absmax,
    byte[]? QAbsmax,
    float[]? NestedAbsmax,
    float[]? NestedCode,
    float NestedOffset)
{
    /// <summary>Spans over the arrays.</summary>
    public Q4PartsView AsView() => new()
    {
        Packed = Packed,
        Code = Code,
        Absmax = Absmax,
        QAbsmax = QAbsmax,
        NestedAbsmax = NestedAbsmax,
        NestedCode = NestedCode,
        NestedOffset = NestedOffset,
    };
}

/// <summary>
/// A reference on a <see cref="Q4Tensor"/> that keeps its storage alive while the
/// spans of <see cref="Parts"/> are read, even if the tensor is disposed meanwhile.
/// </summary>
public readonly ref struct Q4PartsLease
{
    private readonly HandleLease<QLoraQ4TensorHandle> _lease;

    internal Q4PartsLease(HandleLease<QLoraQ4TensorHandle> lease, Q4PartsView parts)
    {
        _lease = lease;
        Parts = parts;
    }

    /// <summary>The tensor's parts; valid until this lease is disposed.</summary>
    public Q4PartsView Parts { get; }

    /// <summary>Releases the reference (and frees the tensor if it was disposed meanwhile).</summary>
    public void Dispose() => _lease.Dispose();
}

/// <summary>
/// A frozen weight matrix [rows = out_features, cols = in_features] in 4-bit NF4 or FP4 with
/// (optionally double-quantized) block scales, byte-compatible with bitsandbytes.
/// </summary>
/// <remarks>
/// The span properties (<see cref="Packed"/>, <see cref="Absmax"/>, ...) view the native storage
/// without copying and are valid while the tensor lives: once it is disposed, reading a property
/// throws <see cref="ObjectDisposedException"/>, but a span taken earlier must not be used after
/// <see cref="Dispose"/>. To read while another thread may dispose, use <see cref="AcquireParts"/>.
/// </remarks>
public sealed unsafe class Q4Tensor : IDisposable
{
    private readonly QLoraQ4TensorSafeHandle _handle;
    private readonly QLoraQ4Parts? _parts; // null for device tensors
    private volatile bool _disposed;

    private Q4Tensor(QLoraQ4TensorSafeHandle handle)
    {
        _handle = handle;
        QLoraQ4Info info;
        QLoraQ4Parts parts;
        using (HandleLease<QLoraQ4TensorHandle> lease = handle.Lease())
        {
            QLoraException.ThrowIfFailed(NativeMethods.qlora_q4_get_info(lease.Value, &info));
            if (info.Device == QLoraConstants.DeviceHost)
            {
                QLoraException.ThrowIfFailed(NativeMethods.qlora_q4_get_parts(lease.Value, &parts));
                _parts = parts;
            }
        }
        Info = new Q4TensorInfo(info);
    }

    /// <summary>Shape, parameters and sizes.</summary>
    public Q4TensorInfo Info { get; }

    /// <summary>Rows (out_features).</summary>
    public long Rows => Info.Rows;

    /// <summary>Columns (in_features).</summary>
    public long Cols => Info.Cols;

    /// <summary>The owning native handle, for calls through <see cref="NativeMethods"/> (use <c>Handle.Lease()</c>).</summary>
    public QLoraQ4TensorSafeHandle Handle => _handle;

    /// <summary>Quantizes fp32 data of shape [rows, cols] (row-major).</summary>
    /// <exception cref="ArgumentException">The span does not hold rows x cols elements.</exception>
    /// <exception cref="QLoraException">Invalid parameters or NaN/Inf in the data (the message names the element).</exception>
    public static Q4Tensor Quantize(QLoraContext context, ReadOnlySpan<float> source, long rows, long cols, QuantParams? parameters = null)
    {
        fixed (float* p = source) return Quantize(context, p, source.Length, QLoraDtype.F32, rows, cols, parameters);
    }

    /// <summary>Quantizes fp16 data of shape [rows, cols] (row-major).</summary>
    /// <exception cref="ArgumentException">The span does not hold rows x cols elements.</exception>
    /// <exception cref="QLoraException">Invalid parameters or NaN/Inf in the data.</exception>
    public static Q4Tensor Quantize(QLoraContext context, ReadOnlySpan<Half> source, long rows, long cols, QuantParams? parameters = null)
    {
        fixed (Half* p = source) return Quantize(context, p, source.Length, QLoraDtype.F16, rows, cols, parameters);
    }

    /// <summary>Quantizes bfloat16 data (the raw 16-bit patterns) of shape [rows, cols] (row-major).</summary>
    /// <exception cref="ArgumentException">The span does not hold rows x cols elements.</exception>
    /// <exception cref="QLoraException">Invalid parameters or NaN/Inf in the data.</exception>
    public static Q4Tensor QuantizeBf16(QLoraContext context, ReadOnlySpan<ushort> source, long rows, long cols, QuantParams? parameters = null)
    {
        fixed (ushort* p = source) return Quantize(context, p, source.Length, QLoraDtype.Bf16, rows, cols, parameters);
    }

    private static Q4Tensor Quantize(QLoraContext context, void* data, int length, QLoraDtype dtype, long rows, long cols, QuantParams? parameters)
    {
        ArgumentNullException.ThrowIfNull(context);
        CheckShape(rows, cols, length, "source");
        QLoraQuantParams p = (parameters ?? QuantParams.Default).ToNative();
        QLoraView view = Views.Host(data, dtype, rows, cols);
        QLoraView* pv = &view;
        QLoraQuantParams* pp = &p;
        return Create((ctx, raw) => NativeMethods.qlora_q4_quantize(ctx, pv, pp, raw), context);
    }

    /// <summary>Dequantizes into fp32 (row-major, <see cref="Q4TensorInfo.ElementCount"/> elements).</summary>
    /// <exception cref="ArgumentException">The destination has the wrong length.</exception>
    public void Dequantize(QLoraContext context, Span<float> destination)
    {
        fixed (float* p = destination) Dequantize(context, p, destination.Length, QLoraDtype.F32);
    }

    /// <summary>Dequantizes into fp16.</summary>
    /// <exception cref="ArgumentException">The destination has the wrong length.</exception>
    public void Dequantize(QLoraContext context, Span<Half> destination)
    {
        fixed (Half* p = destination) Dequantize(context, p, destination.Length, QLoraDtype.F16);
    }

    /// <summary>Dequantizes into bfloat16 (raw 16-bit patterns, round to nearest even).</summary>
    /// <exception cref="ArgumentException">The destination has the wrong length.</exception>
    public void DequantizeBf16(QLoraContext context, Span<ushort> destination)
    {
        fixed (ushort* p = destination) Dequantize(context, p, destination.Length, QLoraDtype.Bf16);
    }

    /// <summary>Dequantizes into a new fp32 array.</summary>
    public float[] Dequantize(QLoraContext context)
    {
        var result = new float[checked((int)Info.ElementCount)];
        Dequantize(context, result);
        return result;
    }

    private void Dequantize(QLoraContext context, void* data, int length, QLoraDtype dtype)
    {
        ArgumentNullException.ThrowIfNull(context);
        if (length != Info.ElementCount)
            throw new ArgumentException($"destination has {length} elements but the tensor is [{Rows}, {Cols}] = {Info.ElementCount}", "destination");
        QLoraView view = Views.Host(data, dtype, Rows, Cols);
        using HandleLease<QLoraContextHandle> ctx = context.Handle.Lease();
        using HandleLease<QLoraQ4TensorHandle> self = Lease();
        QLoraException.ThrowIfFailed(NativeMethods.qlora_q4_dequantize(ctx.Value, self.Value, &view));
    }

    /// <summary>
    /// Builds a tensor from raw parts (e.g. read from a bitsandbytes checkpoint) without re-quantizing;
    /// the parts are copied. Array lengths are checked against the shape and parameters here; value
    /// rules (block sizes, finite scales) by the native core.
    /// </summary>
    /// <exception cref="ArgumentException">A part is missing or has the wrong length.</exception>
    /// <exception cref="QLoraException">The native core rejects the parameters or values.</exception>
    public static Q4Tensor FromParts(QLoraContext context, long rows, long cols, QuantParams parameters, QLoraDtype originalDtype, Q4PartsView parts)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(parameters);
        long numel = CheckShape(rows, cols, null, "parts");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(parameters.BlockSize, nameof(parameters));
        long blocks = (numel + parameters.BlockSize - 1) / parameters.BlockSize;
        ExpectLength(parts.Packed.Length, (numel + 1) / 2, nameof(parts.Packed));
        ExpectLength(parts.Code.Length, 16, nameof(parts.Code));
        if (parameters.DoubleQuant)
        {
            ArgumentOutOfRangeException.ThrowIfNegativeOrZero(parameters.NestedBlockSize, nameof(parameters));
            ExpectLength(parts.QAbsmax.Length, blocks, nameof(parts.QAbsmax));
            ExpectLength(parts.NestedAbsmax.Length, (blocks + parameters.NestedBlockSize - 1) / parameters.NestedBlockSize, nameof(parts.NestedAbsmax));
            ExpectLength(parts.NestedCode.Length, 256, nameof(parts.NestedCode));
            ExpectLength(parts.Absmax.Length, 0, nameof(parts.Absmax));
        }
        else
        {
            ExpectLength(parts.Absmax.Length, blocks, nameof(parts.Absmax));
            ExpectLength(parts.QAbsmax.Length + parts.NestedAbsmax.Length + parts.NestedCode.Length, 0, "parts.QAbsmax/NestedAbsmax/NestedCode");
        }
        QLoraQuantParams p = parameters.ToNative();
        fixed (byte* packed = parts.Packed)
        fixed (float* code = parts.Code)
        fixed (float* absmax = parts.Absmax)
        fixed (byte* qabsmax = parts.QAbsmax)
        fixed (float* nestedAbsmax = parts.NestedAbsmax)
        fixed (float* nestedCode = parts.NestedCode)
        {
            var native = new QLoraQ4Parts
            {
                Packed = packed,
                Code = code,
                Absmax = absmax,
                Qabsmax = qabsmax,
                NestedAbsmax = nestedAbsmax,
                NestedCode = nestedCode,
                NestedOffset = parts.NestedOffset,
            };
            QLoraQuantParams* pp = &p;
            QLoraQ4Parts* pn = &native;
            return Create((ctx, raw) => NativeMethods.qlora_q4_from_parts(ctx, rows, cols, pp, originalDtype, pn, raw), context);
        }
    }

    /// <summary>
    /// Wraps a native 4-bit tensor that another native call produced (e.g. <c>qlora_bnb_read_q4</c>): the
    /// returned object owns <paramref name="handle"/> from now on (disposing it frees the tensor).
    /// </summary>
    /// <exception cref="ArgumentException">The handle owns no native tensor.</exception>
    public static Q4Tensor FromOwnedHandle(QLoraQ4TensorSafeHandle handle)
    {
        ArgumentNullException.ThrowIfNull(handle);
        if (handle.IsInvalid || handle.IsClosed) throw new ArgumentException("the handle owns no native 4-bit tensor", nameof(handle));
        return new Q4Tensor(handle);
    }

    /// <summary>Builds a tensor from a managed copy of parts (see <see cref="GetParts"/>).</summary>
    public static Q4Tensor FromParts(QLoraContext context, Q4Parts parts)
    {
        ArgumentNullException.ThrowIfNull(parts);
        return FromParts(context, parts.Rows, parts.Cols, parts.Params, parts.OriginalDtype, parts.AsView());
    }

    /// <summary>Copies the parts into managed arrays (with the shape and parameters).</summary>
    public Q4Parts GetParts()
    {
        using Q4PartsLease lease = AcquireParts();
        Q4PartsView v = lease.Parts;
        bool dq = Info.Params.DoubleQuant;
        return new Q4Parts(Rows, Cols, Info.Params, Info.OriginalDtype, v.Packed.ToArray(), v.Code.ToArray(),
            dq ? null : v.Absmax.ToArray(), dq ? v.QAbsmax.ToArray() : null, dq ? v.NestedAbsmax.ToArray() : null,
            dq ? v.NestedCode.ToArray() : null, v.NestedOffset);
    }

    /// <summary>Takes a reference that keeps the storage alive while the returned parts are read.</summary>
    /// <exception cref="ObjectDisposedException">The tensor was disposed.</exception>
    public Q4PartsLease AcquireParts()
    {
        HandleLease<QLoraQ4TensorHandle> lease = Lease();
        return new Q4PartsLease(lease, View());
    }

    /// <summary>Packed nibbles, [(n + 1) / 2], the even element in the high nibble. Valid while the tensor lives.</summary>
    /// <exception cref="ObjectDisposedException">The tensor was disposed.</exception>
    public ReadOnlySpan<byte> Packed => Guarded().Packed;

    /// <summary>fp32 block scales [blocks] (empty with double quantization). Valid while the tensor lives.</summary>
    /// <exception cref="ObjectDisposedException">The tensor was disposed.</exception>
    public ReadOnlySpan<float> Absmax => Guarded().Absmax;

    /// <summary>8-bit block scales [blocks] (double quantization; else empty). Valid while the tensor lives.</summary>
    /// <exception cref="ObjectDisposedException">The tensor was disposed.</exception>
    public ReadOnlySpan<byte> QAbsmax => Guarded().QAbsmax;

    /// <summary>fp32 second-level scales [nested blocks] (double quantization; else empty). Valid while the tensor lives.</summary>
    /// <exception cref="ObjectDisposedException">The tensor was disposed.</exception>
    public ReadOnlySpan<float> NestedAbsmax => Guarded().NestedAbsmax;

    /// <summary>The 16-entry code table (quant_map). Valid while the tensor lives.</summary>
    /// <exception cref="ObjectDisposedException">The tensor was disposed.</exception>
    public ReadOnlySpan<float> Code => Guarded().Code;

    /// <summary>The 256-entry map of the 8-bit scales (double quantization; else empty). Valid while the tensor lives.</summary>
    /// <exception cref="ObjectDisposedException">The tensor was disposed.</exception>
    public ReadOnlySpan<float> NestedCode => Guarded().NestedCode;

    /// <summary>The 16-entry code table of a quant type, as bitsandbytes defines it.</summary>
    public static float[] CodeTable(QLoraQuantType quantType)
    {
        var table = new float[16];
        fixed (float* p = table) QLoraException.ThrowIfFailed(NativeMethods.qlora_q4_code_table(quantType, p));
        return table;
    }

    /// <summary>Frees the native tensor (deferred while a lease or a native call holds it).</summary>
    public void Dispose()
    {
        _disposed = true;
        _handle.Dispose();
    }

    /// <inheritdoc/>
    public override string ToString() => $"Q4Tensor([{Rows}, {Cols}], {Info.Params.QuantType}, block {Info.Params.BlockSize}{(Info.Params.DoubleQuant ? ", DQ" : "")})";

    // Throws once Dispose was called, even while an earlier lease still keeps the storage alive.
    private HandleLease<QLoraQ4TensorHandle> Lease()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _handle.Lease();
    }

    // The spans are built under a reference, so a disposed tensor throws instead of exposing freed memory.
    private Q4PartsView Guarded()
    {
        using HandleLease<QLoraQ4TensorHandle> lease = Lease();
        return View();
    }

    private Q4PartsView View()
    {
        QLoraQ4Parts parts = _parts ?? throw new NotSupportedException(
            $"the tensor lives on CUDA device {Info.Device}; its parts can only be viewed on the host");
        bool dq = Info.Params.DoubleQuant;
        int blocks = checked((int)Info.BlockCount);
        return new Q4PartsView
        {
            Packed = new ReadOnlySpan<byte>(parts.Packed, checked((int)Info.PackedBytes)),
            Code = new ReadOnlySpan<float>(parts.Code, 16),
            Absmax = dq ? default : new ReadOnlySpan<float>(parts.Absmax, blocks),
            QAbsmax = dq ? new ReadOnlySpan<byte>(parts.Qabsmax, blocks) : default,
            NestedAbsmax = dq ? new ReadOnlySpan<float>(parts.NestedAbsmax, checked((int)Info.NestedBlockCount)) : default,
            NestedCode = dq ? new ReadOnlySpan<float>(parts.NestedCode, 256) : default,
            NestedOffset = parts.NestedOffset,
        };
    }

    private delegate QLoraStatus Producer(QLoraContextHandle context, QLoraQ4TensorHandle* result);

    // Runs a native call that produces a tensor and wraps the result; nothing leaks on failure.
    private static Q4Tensor Create(Producer produce, QLoraContext context)
    {
        var handle = new QLoraQ4TensorSafeHandle();
        try
        {
            QLoraQ4TensorHandle raw;
            using (HandleLease<QLoraContextHandle> ctx = context.Handle.Lease())
                QLoraException.ThrowIfFailed(produce(ctx.Value, &raw));
            handle.Attach(raw);
            return new Q4Tensor(handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    // Returns rows * cols after checking both are positive and, if given, that a span holds that many.
    private static long CheckShape(long rows, long cols, int? length, string what)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(cols);
        long numel = rows > long.MaxValue / cols ? throw new ArgumentOutOfRangeException(nameof(rows), $"[{rows}, {cols}] overflows") : rows * cols;
        if (length is { } n && n != numel)
            throw new ArgumentException($"{what} has {n} elements but the shape [{rows}, {cols}] needs {numel}", what);
        return numel;
    }

    private static void ExpectLength(long actual, long expected, string name)
    {
        if (actual != expected)
            throw new ArgumentException($"parts.{name} has {actual} elements; the shape and parameters need {expected}", "parts");
    }
}

internal static unsafe class Views
{
    /// <summary>A contiguous host view.</summary>
    public static QLoraView Host(void* data, QLoraDtype dtype, long rows, long cols) => new()
    {
        Data = data,
        Dtype = dtype,
        Device = QLoraConstants.DeviceHost,
        Rows = rows,
        Cols = cols,
        Stride = 0,
    };
}
