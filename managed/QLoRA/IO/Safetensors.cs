using System.Runtime.InteropServices;
using System.Text;

using QLoRA.Native;
using QLoRA.Native.Interop;

namespace QLoRA.IO;

/// <summary>One tensor of a safetensors file (or of a sharded checkpoint).</summary>
/// <param name="Index">Position in data order (shard by shard, increasing offset).</param>
/// <param name="Name">The tensor's key.</param>
/// <param name="Path">The file (shard) that holds it.</param>
/// <param name="Dtype">Element type.</param>
/// <param name="Shape">Dimensions (empty for a scalar).</param>
/// <param name="ElementCount">Product of the shape.</param>
/// <param name="ByteCount">ElementCount x element size.</param>
/// <param name="FileOffset">Absolute offset of the first byte in <paramref name="Path"/>.</param>
public sealed record SafetensorsTensorInfo(
    long Index, string Name, string Path, QLoraDtype Dtype, long[] Shape, long ElementCount, long ByteCount, long FileOffset)
{
    /// <summary>"[a, b]".</summary>
    public string ShapeText => "[" + string.Join(", ", Shape) + "]";

    /// <summary>The dtype as safetensors spells it ("F32", "BF16", "U8", ...).</summary>
    public string DtypeName => Dtypes.SafetensorsName(Dtype);
}

/// <summary>
/// A read-only, memory-mapped safetensors checkpoint (one file, or the shards behind a
/// <c>model.safetensors.index.json</c>), opened through the native core's reader
/// (<c>qlora_safetensors_*</c>): opening reads only the headers, tensor bytes are paged in when touched.
/// </summary>
/// <remarks>Views returned by <see cref="Data"/> point into read-only mapped memory and are valid while this object lives.</remarks>
public sealed unsafe class SafetensorsFile : IDisposable
{
    private readonly QLoraSafetensorsSafeHandle _handle;
    private readonly Dictionary<string, SafetensorsTensorInfo> _byName;

    private SafetensorsFile(QLoraSafetensorsSafeHandle handle, string path)
    {
        _handle = handle;
        Path = path;
        using var lease = handle.Lease();
        long count;
        QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_count(lease.Value, &count));
        var list = new List<SafetensorsTensorInfo>((int)count);
        for (long i = 0; i < count; i++)
        {
            QLoraSafetensorsTensor t;
            QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_info(lease.Value, i, &t));
            var shape = new long[t.NDims];
            for (int d = 0; d < t.NDims; d++) shape[d] = t.Shape[d];
            list.Add(new SafetensorsTensorInfo(i, Utf8(t.Name), Utf8(t.Path), t.Dtype, shape, t.Numel, t.Nbytes, t.FileOffset));
        }
        Tensors = list;
        _byName = list.ToDictionary(t => t.Name, StringComparer.Ordinal);
        long mcount;
        QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_metadata_count(lease.Value, &mcount));
        var meta = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (long i = 0; i < mcount; i++)
        {
            byte* k, v;
            QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_metadata_at(lease.Value, i, &k, &v));
            meta[Utf8(k)] = Utf8(v);
        }
        Metadata = meta;
    }

    /// <summary>The file or index that was opened.</summary>
    public string Path { get; }

    /// <summary>Every tensor, in data order.</summary>
    public IReadOnlyList<SafetensorsTensorInfo> Tensors { get; }

    /// <summary>The <c>__metadata__</c> entries (the union over shards).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The owning native handle (for <see cref="NativeMethods"/> calls, through <c>Lease()</c>).</summary>
    public QLoraSafetensorsSafeHandle Handle => _handle;

    /// <summary>Opens one .safetensors file.</summary>
    /// <exception cref="QLoraException">The file cannot be read (Io) or is malformed (Format); the message names the file and the problem.</exception>
    public static SafetensorsFile Open(string path, QLoraAccessHint access = QLoraAccessHint.Normal) =>
        OpenCore(path, access, index: false);

    /// <summary>Opens a sharded checkpoint from its <c>model.safetensors.index.json</c>.</summary>
    /// <exception cref="QLoraException">An index or shard is missing or malformed, or they disagree.</exception>
    public static SafetensorsFile OpenIndex(string indexPath, QLoraAccessHint access = QLoraAccessHint.Normal) =>
        OpenCore(indexPath, access, index: true);

    /// <summary>
    /// Opens the weights of a Hugging Face model directory: <c>model.safetensors.index.json</c> if present,
    /// else <c>model.safetensors</c>, else the directory's only <c>*.safetensors</c> file.
    /// </summary>
    /// <exception cref="FileNotFoundException">No safetensors weights in the directory (or several without an index).</exception>
    public static SafetensorsFile OpenDirectory(string directory, QLoraAccessHint access = QLoraAccessHint.Normal)
    {
        string index = System.IO.Path.Combine(directory, "model.safetensors.index.json");
        if (File.Exists(index)) return OpenIndex(index, access);
        string single = System.IO.Path.Combine(directory, "model.safetensors");
        if (File.Exists(single)) return Open(single, access);
        string[] any = Directory.Exists(directory) ? Directory.GetFiles(directory, "*.safetensors") : [];
        if (any.Length == 1) return Open(any[0], access);
        if (any.Length > 1)
            throw new FileNotFoundException(
                $"{directory}: {any.Length} .safetensors files but no model.safetensors.index.json saying how they form one checkpoint");
        string bins = Directory.Exists(directory) && Directory.GetFiles(directory, "*.bin").Length > 0
            ? " (PyTorch .bin weights are not read: convert them to safetensors)" : "";
        throw new FileNotFoundException($"{directory}: no model.safetensors, model.safetensors.index.json or other *.safetensors file{bins}");
    }

    private static SafetensorsFile OpenCore(string path, QLoraAccessHint access, bool index)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        QLoraSafetensorsParams p = NativeMethods.qlora_safetensors_default_params();
        p.Access = access;
        var handle = new QLoraSafetensorsSafeHandle();
        try
        {
            QLoraSafetensorsHandle raw;
            using (var s = new Utf8String(path))
                QLoraException.ThrowIfFailed(index
                    ? NativeMethods.qlora_safetensors_open_index(s.Pointer, &p, &raw)
                    : NativeMethods.qlora_safetensors_open(s.Pointer, &p, &raw));
            handle.Attach(raw);
            return new SafetensorsFile(handle, path);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>The tensor called <paramref name="name"/>, or null.</summary>
    public SafetensorsTensorInfo? Find(string name) => _byName.GetValueOrDefault(name);

    /// <summary>The tensor called <paramref name="name"/>.</summary>
    /// <exception cref="InvalidDataException">There is none (the message names the file and the key).</exception>
    public SafetensorsTensorInfo Get(string name) =>
        Find(name) ?? throw new InvalidDataException($"{Path}: no tensor \"{name}\"");

    /// <summary>True when a tensor called <paramref name="name"/> exists.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>A view of the tensor's bytes in the mapped file (rows = product of the leading dims, cols = the last).</summary>
    public QLoraView Data(SafetensorsTensorInfo tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        using var lease = _handle.Lease();
        QLoraView v;
        QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_data(lease.Value, tensor.Index, &v));
        return v;
    }

    /// <summary>Copies the tensor's raw bytes into a new array.</summary>
    public byte[] ReadBytes(SafetensorsTensorInfo tensor)
    {
        QLoraView v = Data(tensor);
        var bytes = new byte[checked((int)tensor.ByteCount)];
        new ReadOnlySpan<byte>(v.Data, bytes.Length).CopyTo(bytes);
        return bytes;
    }

    /// <summary>Asks the kernel to start reading the tensor's pages.</summary>
    public void Prefetch(SafetensorsTensorInfo tensor)
    {
        using var lease = _handle.Lease();
        QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_prefetch(lease.Value, tensor.Index));
    }

    /// <summary>Drops the tensor's pages from this process (they are read again if touched).</summary>
    public void Release(SafetensorsTensorInfo tensor)
    {
        using var lease = _handle.Lease();
        QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_release(lease.Value, tensor.Index));
    }

    /// <summary>
    /// Reads the bitsandbytes 4-bit linear weight stored under <paramref name="prefix"/> (e.g.
    /// "model.layers.0.self_attn.q_proj.") without re-quantizing.
    /// </summary>
    /// <exception cref="QLoraException">A key is missing or disagrees with the quant state (Format; the message names file and key).</exception>
    public Q4Tensor ReadQ4(QLoraContext context, string prefix)
    {
        ArgumentNullException.ThrowIfNull(context);
        var handle = new QLoraQ4TensorSafeHandle();
        try
        {
            QLoraQ4TensorHandle raw;
            using (var ctx = context.Handle.Lease())
            using (var self = _handle.Lease())
            using (var s = new Utf8String(prefix))
                QLoraException.ThrowIfFailed(NativeMethods.qlora_bnb_read_q4(ctx.Value, self.Value, s.Pointer, &raw));
            handle.Attach(raw);
            return Q4Tensor.FromOwnedHandle(handle);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Unmaps the file(s).</summary>
    public void Dispose() => _handle.Dispose();

    internal static string Utf8(byte* p) => p is null ? "" : Marshal.PtrToStringUTF8((nint)p) ?? "";
}

/// <summary>
/// Collects tensors and writes one safetensors file atomically, through the native writer
/// (<c>qlora_safetensors_writer_*</c>): the reference layout, aligned tensors, all or nothing.
/// </summary>
public sealed unsafe class SafetensorsWriter : IDisposable
{
    private readonly QLoraSafetensorsWriterSafeHandle _handle = new();
    // Borrowed memory that must stay alive until Write: pinned arrays and the objects that own native memory.
    private readonly List<GCHandle> _pins = [];
    private readonly List<object> _keepAlive = [];

    /// <summary>Creates an empty writer.</summary>
    public SafetensorsWriter()
    {
        QLoraSafetensorsWriterHandle raw;
        QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_writer_create(&raw));
        _handle.Attach(raw);
    }

    /// <summary>
    /// Adds a tensor from a native view. With <paramref name="borrow"/>, only the pointer is kept: the memory must
    /// stay valid until <see cref="Write"/> returns (pass its owner as <paramref name="owner"/> to keep it alive).
    /// </summary>
    public void Add(string name, QLoraView data, ReadOnlySpan<long> shape, bool borrow = false, object? owner = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        using var lease = _handle.Lease();
        using var s = new Utf8String(name);
        fixed (long* pshape = shape)
            QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_writer_add(lease.Value, s.Pointer, &data, shape.Length, pshape, borrow ? 1 : 0));
        if (borrow && owner is not null) _keepAlive.Add(owner);
    }

    /// <summary>Adds a tensor whose elements are in a managed array (pinned, not copied, until <see cref="Write"/>).</summary>
    public void Add<T>(string name, T[] data, QLoraDtype dtype, params long[] shape) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(data);
        long elementBytes = (long)Dtypes.Size(dtype);
        long bytes = (long)data.Length * sizeof(T);
        if (elementBytes == 0 || bytes % elementBytes != 0)
            throw new ArgumentException($"{name}: {bytes} bytes are not a whole number of {dtype} elements", nameof(data));
        long count = bytes / elementBytes;
        long expect = 1;
        foreach (long d in shape) expect *= d;
        if (expect != count) throw new ArgumentException($"{name}: shape [{string.Join(", ", shape)}] needs {expect} {dtype} elements, the array holds {count}", nameof(shape));
        GCHandle pin = GCHandle.Alloc(data, GCHandleType.Pinned);
        _pins.Add(pin);
        var view = new QLoraView { Data = (void*)pin.AddrOfPinnedObject(), Dtype = dtype, Device = QLoraConstants.DeviceHost, Rows = 1, Cols = count, Stride = 0 };
        Add(name, view, shape, borrow: true);
    }

    /// <summary>Adds a 4-bit tensor under <paramref name="prefix"/> with bitsandbytes' keys (borrowed: it must outlive <see cref="Write"/>).</summary>
    public void AddQ4(string prefix, Q4Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        using var lease = _handle.Lease();
        using var t = tensor.Handle.Lease();
        using var s = new Utf8String(prefix);
        QLoraException.ThrowIfFailed(NativeMethods.qlora_bnb_add_q4(lease.Value, s.Pointer, t.Value, 1));
        _keepAlive.Add(tensor);
    }

    /// <summary>Adds a <c>__metadata__</c> entry.</summary>
    public void SetMetadata(string key, string value)
    {
        using var lease = _handle.Lease();
        using var k = new Utf8String(key);
        using var v = new Utf8String(value);
        QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_writer_set_metadata(lease.Value, k.Pointer, v.Pointer));
    }

    /// <summary>Writes everything added so far to <paramref name="path"/> atomically.</summary>
    public void Write(string path)
    {
        using var lease = _handle.Lease();
        using var s = new Utf8String(path);
        QLoraException.ThrowIfFailed(NativeMethods.qlora_safetensors_writer_write(lease.Value, s.Pointer));
        GC.KeepAlive(_keepAlive);
    }

    /// <summary>Frees the writer and unpins borrowed arrays.</summary>
    public void Dispose()
    {
        _handle.Dispose();
        foreach (var pin in _pins) pin.Free();
        _pins.Clear();
        _keepAlive.Clear();
    }
}

/// <summary>dtype helpers.</summary>
public static class Dtypes
{
    /// <summary>Bytes per element.</summary>
    public static int Size(QLoraDtype dtype) => (int)NativeMethods.qlora_dtype_size(dtype);

    /// <summary>The safetensors spelling of a dtype.</summary>
    public static string SafetensorsName(QLoraDtype dtype) => dtype switch
    {
        QLoraDtype.F32 => "F32",
        QLoraDtype.F16 => "F16",
        QLoraDtype.Bf16 => "BF16",
        QLoraDtype.U8 => "U8",
        QLoraDtype.I32 => "I32",
        QLoraDtype.I64 => "I64",
        QLoraDtype.F64 => "F64",
        QLoraDtype.I8 => "I8",
        QLoraDtype.I16 => "I16",
        QLoraDtype.U16 => "U16",
        QLoraDtype.U32 => "U32",
        QLoraDtype.U64 => "U64",
        QLoraDtype.Bool => "BOOL",
        QLoraDtype.F8E4m3 => "F8_E4M3",
        QLoraDtype.F8E5m2 => "F8_E5M2",
        _ => dtype.ToString(),
    };
}

/// <summary>A NUL-terminated UTF-8 copy of a string in native memory, for one native call.</summary>
internal readonly unsafe struct Utf8String : IDisposable
{
    public Utf8String(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        int n = Encoding.UTF8.GetByteCount(value);
        Pointer = (byte*)NativeMemory.Alloc((nuint)n + 1);
        Encoding.UTF8.GetBytes(value, new Span<byte>(Pointer, n));
        Pointer[n] = 0;
    }

    public byte* Pointer { get; }

    public void Dispose() => NativeMemory.Free(Pointer);
}
