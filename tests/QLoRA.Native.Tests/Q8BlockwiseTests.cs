namespace QLoRA.Native.Tests;

public sealed class Q8BlockwiseTests
{
    [Test]
    public void DynamicMap_IsBitsandbytesSignedMap()
    {
        float[] map = Q8Blockwise.DynamicMap();
        Assert.Multiple(() =>
        {
            Assert.That(map, Is.EqualTo(Oracle.DynamicMap()), "built from its definition in FORMATS.md");
            Assert.That(map[0], Is.EqualTo(-0.992968738079071f));
            Assert.That(map[127], Is.EqualTo(0f));
            Assert.That(map[128], Is.EqualTo(5.500000384017767e-07f));
            Assert.That(map[254], Is.EqualTo(0.992968738079071f));
            Assert.That(map[255], Is.EqualTo(1f));
        });
    }

    [Test]
    public void RoundTrip_IsTheNearestMapEntry(
        [Values(QLoraBackend.Ref, QLoraBackend.Cpu)] QLoraBackend backend,
        [Values(64, 256, 4096)] int blockSize,
        [Values(false, true)] bool linearMap)
    {
        using QLoraContext ctx = QLoraContext.Create(new QLoraContextOptions { Backend = backend, Threads = 2 });
        float[] x = Oracle.Normal(10_001, seed: blockSize);
        float[] map = linearMap ? Enumerable.Range(0, 256).Select(i => -1f + 2f * i / 255f).ToArray() : Oracle.DynamicMap();
        int blocks = (int)Q8Blockwise.BlockCount(x.Length, blockSize);
        var codes = new byte[x.Length];
        var absmax = new float[blocks];
        var y = new float[x.Length];
        Q8Blockwise.Quantize(ctx, x, blockSize, codes, absmax, linearMap ? map : default);
        Q8Blockwise.Dequantize(ctx, codes, absmax, blockSize, y, linearMap ? map : default);

        int failures = 0;
        string first = "";
        for (int b = 0; b < blocks; b++)
        {
            float expectedMax = 0;
            for (int i = b * blockSize; i < Math.Min(x.Length, (b + 1) * blockSize); i++) expectedMax = Math.Max(expectedMax, Math.Abs(x[i]));
            Assert.That(absmax[b], Is.EqualTo(expectedMax), $"absmax[{b}]");
        }
        for (int i = 0; i < x.Length; i++)
        {
            double a = absmax[i / blockSize], v = x[i] / a;
            double bound = Oracle.RoundingBound(map, v) * a;
            bool nearest = Oracle.Nearest(map.Select(m => (double)m).ToList(), v).Contains(codes[i]);
            if ((!nearest || Math.Abs(y[i] - x[i]) > bound * (1 + 1e-6) + 1e-7 * a) && failures++ == 0)
                first = $"element {i}: x = {x[i]}, code {codes[i]}, got {y[i]}, bound {bound}";
        }
        Assert.That(failures, Is.Zero, $"{failures} elements are not the nearest map entry or exceed the rounding bound; first: {first}");
    }

    [Test]
    public void Errors_ManagedLengths_AndNativeRules()
    {
        using QLoraContext ctx = QLoraContext.Create();
        float[] x = Oracle.Normal(1000, seed: 2);
        var absmax = Assert.Throws<ArgumentException>(() => Q8Blockwise.Quantize(ctx, x, 256, new byte[1000], new float[3]));
        var codes = Assert.Throws<ArgumentException>(() => Q8Blockwise.Quantize(ctx, x, 256, new byte[999], new float[4]));
        var map = Assert.Throws<ArgumentException>(() => Q8Blockwise.Quantize(ctx, x, 256, new byte[1000], new float[4], new float[16]));
        var block = Assert.Throws<QLoraException>(() => Q8Blockwise.Quantize(ctx, x, 100, new byte[1000], new float[10]));
        var unsorted = Enumerable.Range(0, 256).Select(i => (float)i).ToArray();
        unsorted[9] = float.NaN;
        var nanMap = Assert.Throws<QLoraException>(() => Q8Blockwise.Dequantize(ctx, new byte[1000], new float[4], 256, new float[1000], unsorted));
        Assert.Multiple(() =>
        {
            Assert.That(absmax!.ParamName, Is.EqualTo("absmax"));
            Assert.That(absmax.Message, Does.Contain("1000 values in blocks of 256 need 4"));
            Assert.That(codes!.ParamName, Is.EqualTo("codes"));
            Assert.That(map!.ParamName, Is.EqualTo("map"));
            Assert.That(block!.NativeMessage, Does.StartWith("qlora_q8_quantize: blocksize must be a power of two in [32, 4096], got 100"));
            Assert.That(nanMap!.NativeMessage, Does.Match(@"^qlora_q8_dequantize: code\[9\] is -?nan; scales and tables must be finite"));
        });
    }
}
