using System.Buffers.Binary;
using System.Text;

using QLoRA.Training;

namespace QLoRA.Tests.Training;

public class MetricsTests
{
    [Test]
    public void Crc32CMatchesThePublishedCheckValues()
    {
        // RFC 3720 (iSCSI) B.4 and the CRC catalogue's check value of CRC-32C.
        Assert.That(TensorBoardWriter.Crc32C(Encoding.ASCII.GetBytes("123456789")), Is.EqualTo(0xE3069283u));
        Assert.That(TensorBoardWriter.Crc32C(new byte[32]), Is.EqualTo(0x8A9136AAu));
        Assert.That(TensorBoardWriter.Crc32C(Enumerable.Repeat((byte)0xFF, 32).ToArray()), Is.EqualTo(0x62A8AB43u));
        Assert.That(TensorBoardWriter.Crc32C(Enumerable.Range(0, 32).Select(i => (byte)i).ToArray()), Is.EqualTo(0x46DD794Eu));
    }

    [Test]
    public void ScalarEventsAreProtobufEncodedAsTensorFlowDefinesThem()
    {
        // Event { wall_time: 2.0, step: 3, summary { value { tag: "a" simple_value: 1.5 } } }, encoded by hand:
        // 09 <double 2.0> 10 03 2A 0A 0A 08 0A 01 61 15 <float 1.5>
        byte[] expect = [0x09, 0, 0, 0, 0, 0, 0, 0, 0x40, 0x10, 0x03, 0x2A, 0x0A, 0x0A, 0x08, 0x0A, 0x01, 0x61, 0x15, 0, 0, 0xC0, 0x3F];
        Assert.That(TensorBoardWriter.EncodeScalars(2.0, 3, [("a", 1.5f)]), Is.EqualTo(expect));
        byte[] version = TensorBoardWriter.EncodeFileVersion(0);
        Assert.That(version.Skip(9).ToArray(), Is.EqualTo(new byte[] { 0x1A, 13 }.Concat(Encoding.ASCII.GetBytes("brain.Event:2"))));
    }

    [Test]
    public void EventFileIsTfRecordFramed()
    {
        string dir = Directory.CreateTempSubdirectory("qlora-tb-").FullName;
        try
        {
            string path;
            using (var w = new TensorBoardWriter(dir))
            {
                w.AddScalars(1, [("train/loss", 2.5f)]);
                w.AddScalars(2, [("train/loss", 2.0f), ("train/lr", 1e-4f)]);
                path = w.Path;
            }
            Assert.That(Path.GetFileName(path), Does.StartWith("events.out.tfevents."));
            byte[] bytes = File.ReadAllBytes(path);
            int at = 0, records = 0;
            while (at < bytes.Length)
            {
                ulong len = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at));
                uint lenCrc = BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 8));
                Assert.That(lenCrc, Is.EqualTo(Masked(bytes.AsSpan(at, 8))));
                var data = bytes.AsSpan(at + 12, (int)len);
                Assert.That(BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(at + 12 + (int)len)), Is.EqualTo(Masked(data)));
                at += 12 + (int)len + 4;
                records++;
            }
            Assert.That(at, Is.EqualTo(bytes.Length));
            Assert.That(records, Is.EqualTo(3), "file version + 2 scalar events");
        }
        finally
        {
            Directory.Delete(dir, true);
        }

        // TFRecord's mask written out independently: rotate right by 15, add the constant.
        static uint Masked(ReadOnlySpan<byte> d)
        {
            uint c = TensorBoardWriter.Crc32C(d);
            return unchecked(((c >> 15) | (c << 17)) + 0xa282ead8u);
        }
    }

    [Test]
    public void SchedulesFollowHuggingFace()
    {
        var c = new LrSchedule(LrScheduleKind.Constant, 1e-3, 10, 100);
        Assert.That(c.At(0), Is.EqualTo(0));
        Assert.That(c.At(5), Is.EqualTo(5e-4).Within(1e-15));
        Assert.That(c.At(10), Is.EqualTo(1e-3));
        Assert.That(c.At(99), Is.EqualTo(1e-3));
        var l = new LrSchedule(LrScheduleKind.Linear, 1e-3, 10, 110);
        Assert.That(l.At(60), Is.EqualTo(5e-4).Within(1e-15));
        Assert.That(l.At(110), Is.EqualTo(0));
        var cos = new LrSchedule(LrScheduleKind.Cosine, 1e-3, 0, 100);
        Assert.That(cos.At(0), Is.EqualTo(1e-3));
        Assert.That(cos.At(50), Is.EqualTo(5e-4).Within(1e-15));
        Assert.That(cos.At(25), Is.EqualTo(1e-3 * 0.5 * (1 + Math.Cos(Math.PI / 4))).Within(1e-15));
        Assert.Throws<ArgumentException>(() => LrSchedule.ParseKind("step"));
    }
}
