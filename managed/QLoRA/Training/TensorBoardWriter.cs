using System.Buffers.Binary;
using System.Numerics;
using System.Text;

namespace QLoRA.Training;

/// <summary>
/// Writes TensorBoard event files (<c>events.out.tfevents.&lt;seconds&gt;.&lt;host&gt;</c>) with scalar summaries,
/// without TensorFlow or a protobuf library: each record is TFRecord-framed (uint64 length, masked CRC32C of
/// the length, the bytes, masked CRC32C of the bytes) and holds a hand-encoded <c>tensorflow.Event</c>
/// protobuf (wall_time = 1, step = 2, file_version = 3, summary = 5; Summary.value = 1; Value.tag = 1,
/// Value.simple_value = 2). The first record is the file-version event "brain.Event:2".
/// </summary>
public sealed class TensorBoardWriter : IDisposable
{
    private readonly FileStream _file;

    /// <summary>Creates a new event file in <paramref name="directory"/> (created if missing).</summary>
    public TensorBoardWriter(string directory)
    {
        Directory.CreateDirectory(directory);
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string host = Environment.MachineName;
        Path = System.IO.Path.Combine(directory, $"events.out.tfevents.{now}.{host}");
        for (int i = 1; File.Exists(Path); i++)
            Path = System.IO.Path.Combine(directory, $"events.out.tfevents.{now}.{host}.{i}");
        _file = new FileStream(Path, FileMode.CreateNew, FileAccess.Write, FileShare.Read);
        WriteRecord(EncodeFileVersion(NowSeconds()));
        _file.Flush();
    }

    /// <summary>The event file.</summary>
    public string Path { get; }

    /// <summary>Appends one event holding the scalar values at <paramref name="step"/>, and flushes.</summary>
    public void AddScalars(long step, IEnumerable<(string Tag, float Value)> values)
    {
        WriteRecord(EncodeScalars(NowSeconds(), step, values));
        _file.Flush();
    }

    private static double NowSeconds() => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0;

    private void WriteRecord(byte[] data)
    {
        Span<byte> header = stackalloc byte[12];
        BinaryPrimitives.WriteUInt64LittleEndian(header, (ulong)data.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], MaskedCrc32C(header[..8]));
        Span<byte> footer = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(footer, MaskedCrc32C(data));
        _file.Write(header);
        _file.Write(data);
        _file.Write(footer);
    }

    /// <summary>CRC-32C (Castagnoli) of <paramref name="data"/> (initial value and final xor 0xFFFFFFFF).</summary>
    public static uint Crc32C(ReadOnlySpan<byte> data)
    {
        uint crc = 0xFFFFFFFF;
        foreach (byte b in data) crc = BitOperations.Crc32C(crc, b);
        return ~crc;
    }

    /// <summary>TFRecord's masked CRC: ((crc &gt;&gt; 15) | (crc &lt;&lt; 17)) + 0xa282ead8.</summary>
    public static uint MaskedCrc32C(ReadOnlySpan<byte> data)
    {
        uint crc = Crc32C(data);
        return unchecked(((crc >> 15) | (crc << 17)) + 0xa282ead8u);
    }

    /// <summary>The Event { wall_time, file_version = "brain.Event:2" } bytes.</summary>
    public static byte[] EncodeFileVersion(double wallTime)
    {
        var w = new ProtoWriter();
        w.Double(1, wallTime);
        w.Bytes(3, Encoding.UTF8.GetBytes("brain.Event:2"));
        return w.ToArray();
    }

    /// <summary>The Event { wall_time, step, summary { value { tag, simple_value } ... } } bytes.</summary>
    public static byte[] EncodeScalars(double wallTime, long step, IEnumerable<(string Tag, float Value)> values)
    {
        var summary = new ProtoWriter();
        foreach (var (tag, value) in values)
        {
            var v = new ProtoWriter();
            v.Bytes(1, Encoding.UTF8.GetBytes(tag));
            v.Float(2, value);
            summary.Bytes(1, v.ToArray());
        }
        var e = new ProtoWriter();
        e.Double(1, wallTime);
        e.Varint(2, (ulong)step);
        e.Bytes(5, summary.ToArray());
        return e.ToArray();
    }

    /// <summary>Closes the file.</summary>
    public void Dispose() => _file.Dispose();

    private sealed class ProtoWriter
    {
        private readonly MemoryStream _s = new();

        private void Raw(ulong v)
        {
            while (v >= 0x80)
            {
                _s.WriteByte((byte)(v | 0x80));
                v >>= 7;
            }
            _s.WriteByte((byte)v);
        }

        public void Varint(int field, ulong value)
        {
            Raw((ulong)(field << 3));
            Raw(value);
        }

        public void Double(int field, double value)
        {
            Raw((ulong)((field << 3) | 1));
            Span<byte> b = stackalloc byte[8];
            BinaryPrimitives.WriteDoubleLittleEndian(b, value);
            _s.Write(b);
        }

        public void Float(int field, float value)
        {
            Raw((ulong)((field << 3) | 5));
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteSingleLittleEndian(b, value);
            _s.Write(b);
        }

        public void Bytes(int field, byte[] value)
        {
            Raw((ulong)((field << 3) | 2));
            Raw((ulong)value.Length);
            _s.Write(value);
        }

        public byte[] ToArray() => _s.ToArray();
    }
}
