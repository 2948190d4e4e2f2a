namespace QLoRA.Native.Tests;

public sealed class Q4TensorTests
{
    private static QLoraContext Context(QLoraBackend backend) =>
        QLoraContext.Create(new QLoraContextOptions { Backend = backend, Threads = backend == QLoraBackend.Ref ? 1 : 2 });

    // An odd element count that is not a multiple of any block size, with one all-zero row.
    private const int Rows = 37, Cols = 99;

    private static float[] Data(int seed)
    {
        float[] x = Oracle.Normal(Rows * Cols, seed);
        Array.Clear(x, 5 * Cols, Cols);
        return x;
    }

    [Test]
    public void QuantizeDequantize_MatchesFloat64NearestCodeOracle(
        [Values(QLoraBackend.Ref, QLoraBackend.Cpu)] QLoraBackend backend,
        [Values(QLoraQuantType.Nf4, QLoraQuantType.Fp4, QLoraQuantType.Int4)] QLoraQuantType quantType,
        [Values(32, 64, 256, 4096)] int blockSize,
        [Values(true, false)] bool doubleQuant)
    {
        using QLoraContext ctx = Context(backend);
        float[] x = Data(seed: 1000 + blockSize);
        var p = new QuantParams { QuantType = quantType, BlockSize = blockSize, DoubleQuant = doubleQuant, NestedBlockSize = 32 };
        using Q4Tensor t = Q4Tensor.Quantize(ctx, x, Rows, Cols, p);
        float[] y = t.Dequantize(ctx);

        double[] table = Oracle.Table(quantType);
        int n = x.Length, blocks = (n + blockSize - 1) / blockSize;
        Assert.That(t.Info.BlockCount, Is.EqualTo(blocks));
        var absmax = new float[blocks];
        for (int i = 0; i < n; i++) absmax[i / blockSize] = Math.Max(absmax[i / blockSize], Math.Abs(x[i]));

        double[] scale = doubleQuant ? DecodedScales(t, absmax, p.NestedBlockSize) : absmax.Select(a => (double)a).ToArray();
        if (!doubleQuant) Assert.That(t.Absmax.ToArray(), Is.EqualTo(absmax), "fp32 absmax = max |x| per block");

        int failures = 0;
        string first = "";
        for (int i = 0; i < n; i++)
        {
            int b = i / blockSize;
            double xn = absmax[b] == 0 ? 0 : x[i] / (double)absmax[b];
            bool ok = Oracle.Nearest(table, xn).Any(k => Math.Abs(y[i] - table[k] * scale[b]) <= 1e-6 * Math.Abs(scale[b]) + 1e-30);
            if (!ok && failures++ == 0) first = $"element {i}: x = {x[i]}, x/absmax = {xn}, got {y[i]}, scale {scale[b]}";
            Assert.That(float.IsFinite(y[i]), $"element {i} is {y[i]}");
        }
        Assert.That(failures, Is.Zero, $"{failures} of {n} elements differ from the nearest-code oracle; first: {first}");
        Assert.That(y.Skip(5 * Cols).Take(Cols), Is.All.EqualTo(0f), "the all-zero row");
    }

    // Decodes the double-quantized scales from the tensor's parts by FORMATS.md's formula (float64),
    // after checking each part against its own definition and the 8-bit map's rounding bound.
    private static double[] DecodedScales(Q4Tensor t, float[] absmax, int nestedBlockSize)
    {
        double mean = absmax.Select(a => (double)a).Average();
        Assert.That(t.Info.NestedOffset, Is.EqualTo((float)mean).Within(1e-6).Percent, "nested_offset = mean(absmax)");
        float offset = t.Info.NestedOffset;
        float[] map = Oracle.DynamicMap();
        Assert.That(t.NestedCode.ToArray(), Is.EqualTo(map), "nested_quant_map = the signed dynamic map");
        ReadOnlySpan<byte> q = t.QAbsmax;
        ReadOnlySpan<float> nested = t.NestedAbsmax;
        Assert.That(q.Length, Is.EqualTo(absmax.Length));
        Assert.That(nested.Length, Is.EqualTo((absmax.Length + nestedBlockSize - 1) / nestedBlockSize));
        Assert.That(t.Absmax.IsEmpty, "no fp32 absmax with double quantization");
        var scale = new double[absmax.Length];
        for (int b = 0; b < absmax.Length; b++)
        {
            int g = b / nestedBlockSize;
            float groupMax = 0;
            for (int j = g * nestedBlockSize; j < Math.Min(absmax.Length, (g + 1) * nestedBlockSize); j++)
                groupMax = Math.Max(groupMax, Math.Abs(absmax[j] - offset));
            Assert.That(nested[g], Is.EqualTo(groupMax), $"nested_absmax[{g}] = max |absmax - offset| over its group");
            scale[b] = map[q[b]] * (double)nested[g] + offset;
            // A group whose scales all equal the offset has nested_absmax 0 and decodes to the offset exactly.
            double bound = nested[g] == 0 ? 0 : Oracle.RoundingBound(map, (absmax[b] - offset) / (double)nested[g]) * nested[g];
            Assert.That(Math.Abs(scale[b] - absmax[b]), Is.LessThanOrEqualTo(bound * (1 + 1e-5) + 1e-6 * absmax[b]),
                $"decoded scale of block {b} is within the 8-bit map's rounding of its absmax");
        }
        return scale;
    }

    [Test]
    public void Half_And_Bf16_InputsQuantizeLikeTheirFloatValues_AndOutputsRoundToNearestEven()
    {
        using QLoraContext ctx = Context(QLoraBackend.Cpu);
        float[] x = Data(seed: 7);
        Half[] h = x.Select(v => (Half)v).ToArray();
        ushort[] bf = x.Select(Oracle.ToBf16).ToArray();

        using Q4Tensor fromHalf = Q4Tensor.Quantize(ctx, h, Rows, Cols);
        using Q4Tensor fromHalfAsFloat = Q4Tensor.Quantize(ctx, h.Select(v => (float)v).ToArray(), Rows, Cols);
        using Q4Tensor fromBf16 = Q4Tensor.QuantizeBf16(ctx, bf, Rows, Cols);
        using Q4Tensor fromBf16AsFloat = Q4Tensor.Quantize(ctx, bf.Select(Oracle.FromBf16).ToArray(), Rows, Cols);
        Assert.Multiple(() =>
        {
            Assert.That(fromHalf.Packed.ToArray(), Is.EqualTo(fromHalfAsFloat.Packed.ToArray()));
            Assert.That(fromHalf.QAbsmax.ToArray(), Is.EqualTo(fromHalfAsFloat.QAbsmax.ToArray()));
            Assert.That(fromHalf.Info.OriginalDtype, Is.EqualTo(QLoraDtype.F16));
            Assert.That(fromBf16.Packed.ToArray(), Is.EqualTo(fromBf16AsFloat.Packed.ToArray()));
            Assert.That(fromBf16.Info.OriginalDtype, Is.EqualTo(QLoraDtype.Bf16));
        });

        float[] f32 = fromHalf.Dequantize(ctx);
        var f16 = new Half[f32.Length];
        var b16 = new ushort[f32.Length];
        fromHalf.Dequantize(ctx, f16);
        fromHalf.DequantizeBf16(ctx, b16);
        Assert.Multiple(() =>
        {
            Assert.That(f16, Is.EqualTo(f32.Select(v => (Half)v).ToArray()), "fp16 output = RNE(fp32 output)");
            Assert.That(b16, Is.EqualTo(f32.Select(Oracle.ToBf16).ToArray()), "bf16 output = RNE(fp32 output)");
        });
    }

    [Test]
    public void Spans_ViewTheStorage_AndThrowObjectDisposedAfterDispose()
    {
        using QLoraContext ctx = Context(QLoraBackend.Cpu);
        Q4Tensor t = Q4Tensor.Quantize(ctx, Data(seed: 3), Rows, Cols);
        Assert.Multiple(() =>
        {
            Assert.That(t.Packed.Length, Is.EqualTo((Rows * Cols + 1) / 2));
            Assert.That(t.Code.ToArray(), Is.EqualTo(Oracle.Nf4.Select(v => (float)v).ToArray()), "NF4 quant_map, bit for bit");
            Assert.That(t.QAbsmax.Length, Is.EqualTo((Rows * Cols + 63) / 64));
            Assert.That(t.NestedCode.Length, Is.EqualTo(256));
            Assert.That(t.Absmax.IsEmpty);
        });
        int lastNibble = t.Packed[^1] & 0x0F;
        Assert.That(lastNibble, Is.Zero, "an odd element count pads the last low nibble with 0");

        t.Dispose();
        Assert.That(t.Handle.IsClosed);
        Assert.Multiple(() =>
        {
            Assert.Throws<ObjectDisposedException>(() => _ = t.Packed.Length);
            Assert.Throws<ObjectDisposedException>(() => _ = t.Code.Length);
            Assert.Throws<ObjectDisposedException>(() => _ = t.QAbsmax.Length);
            Assert.Throws<ObjectDisposedException>(() => _ = t.NestedAbsmax.Length);
            Assert.Throws<ObjectDisposedException>(() => _ = t.NestedCode.Length);
            Assert.Throws<ObjectDisposedException>(() => t.AcquireParts().Dispose());
            Assert.Throws<ObjectDisposedException>(() => t.GetParts());
            Assert.Throws<ObjectDisposedException>(() => t.Dequantize(ctx));
            Assert.That(t.Info.Rows, Is.EqualTo(Rows), "Info is a managed copy");
        });
        t.Dispose(); // idempotent
    }

    [Test]
    public void PartsLease_KeepsStorageAliveAcrossDispose()
    {
        using QLoraContext ctx = Context(QLoraBackend.Cpu);
        Q4Tensor t = Q4Tensor.Quantize(ctx, Data(seed: 4), Rows, Cols);
        byte[] packed = t.Packed.ToArray();
        float[] nested = t.NestedAbsmax.ToArray();
        using (Q4PartsLease lease = t.AcquireParts())
        {
            t.Dispose();
            Assert.Throws<ObjectDisposedException>(() => _ = t.Packed.Length, "disposed, even though the storage lives on");
            Assert.That(t.Handle.IsClosed, Is.False, "the native free waits for the lease");
            Assert.That(lease.Parts.Packed.ToArray(), Is.EqualTo(packed), "the lease still reads the live storage");
            Assert.That(lease.Parts.NestedAbsmax.ToArray(), Is.EqualTo(nested));
        }
        Assert.That(t.Handle.IsClosed, "freed when the lease ended");
    }

    [Test]
    public void FromParts_OfGetParts_RoundTripsBitExactly([Values(true, false)] bool doubleQuant, [Values(QLoraQuantType.Nf4, QLoraQuantType.Fp4, QLoraQuantType.Int4)] QLoraQuantType quantType)
    {
        using QLoraContext ctx = Context(QLoraBackend.Cpu);
        var p = new QuantParams { QuantType = quantType, DoubleQuant = doubleQuant, BlockSize = 128 };
        using Q4Tensor t = Q4Tensor.Quantize(ctx, Data(seed: 5), Rows, Cols, p);
        Q4Parts parts = t.GetParts();
        using Q4Tensor u = Q4Tensor.FromParts(ctx, parts);
        Q4Parts again = u.GetParts();
        Assert.Multiple(() =>
        {
            Assert.That(u.Info, Is.EqualTo(t.Info));
            Assert.That(u.Dequantize(ctx), Is.EqualTo(t.Dequantize(ctx)));
            Assert.That(again.Packed, Is.EqualTo(parts.Packed));
            Assert.That(again.Code, Is.EqualTo(parts.Code));
            Assert.That(again.Absmax, Is.EqualTo(parts.Absmax));
            Assert.That(again.QAbsmax, Is.EqualTo(parts.QAbsmax));
            Assert.That(again.NestedAbsmax, Is.EqualTo(parts.NestedAbsmax));
            Assert.That(again.NestedCode, Is.EqualTo(parts.NestedCode));
            Assert.That(again.NestedOffset, Is.EqualTo(parts.NestedOffset));
        });
    }

    [Test]
    public void FromParts_WrongLengths_AreRejectedInManagedCode()
    {
        using QLoraContext ctx = Context(QLoraBackend.Cpu);
        using Q4Tensor t = Q4Tensor.Quantize(ctx, Data(seed: 6), Rows, Cols);
        Q4Parts parts = t.GetParts();
        var shortPacked = Assert.Throws<ArgumentException>(() => Q4Tensor.FromParts(ctx, parts with { Packed = parts.Packed[1..] }));
        var noNested = Assert.Throws<ArgumentException>(() => Q4Tensor.FromParts(ctx, parts with { NestedAbsmax = null }));
        var shortCode = Assert.Throws<ArgumentException>(() => Q4Tensor.FromParts(ctx, parts with { Code = new float[15] }));
        Assert.Multiple(() =>
        {
            Assert.That(shortPacked!.ParamName, Is.EqualTo("parts"));
            Assert.That(shortPacked.Message, Does.Contain("Packed has 1831 elements").And.Contain("need 1832"));
            Assert.That(noNested!.Message, Does.Contain("NestedAbsmax has 0 elements"));
            Assert.That(shortCode!.Message, Does.Contain("Code has 15 elements"));
        });
    }

    [Test]
    public void NativeErrors_SurfaceAsQLoraException_WithTheNativeMessage()
    {
        using QLoraContext ctx = Context(QLoraBackend.Cpu);
        float[] x = Data(seed: 8);
        x[2 * Cols + 5] = float.NaN;
        var nan = Assert.Throws<QLoraException>(() => Q4Tensor.Quantize(ctx, x, Rows, Cols));
        var block = Assert.Throws<QLoraException>(() => Q4Tensor.Quantize(ctx, Data(seed: 8), Rows, Cols, new QuantParams { BlockSize = 48 }));

        using Q4Tensor t = Q4Tensor.Quantize(ctx, Data(seed: 8), Rows, Cols, new QuantParams { DoubleQuant = false });
        Q4Parts parts = t.GetParts();
        float[] absmax = (float[])parts.Absmax!.Clone();
        absmax[3] = float.PositiveInfinity;
        var inf = Assert.Throws<QLoraException>(() => Q4Tensor.FromParts(ctx, parts with { Absmax = absmax }));
        var badType = Assert.Throws<QLoraException>(() => Q4Tensor.CodeTable((QLoraQuantType)7));
        Assert.Multiple(() =>
        {
            Assert.That(nan!.Status, Is.EqualTo(QLoraStatus.ErrorInvalidArgument));
            Assert.That(nan.NativeMessage, Does.StartWith("qlora_q4_quantize: src[2, 5] is not finite"));
            Assert.That(nan.Message, Does.Contain(nan.NativeMessage));
            Assert.That(block!.NativeMessage, Does.Contain("blocksize must be a power of two in [32, 4096], got 48"));
            Assert.That(inf!.NativeMessage, Does.StartWith("qlora_q4_from_parts: absmax[3] is inf"));
            Assert.That(badType!.NativeMessage, Does.Contain("quant_type must be NF4 (0), FP4 (1) or INT4 (2), got 7"));
        });
    }

    [Test]
    public void ManagedArgumentChecks_NameTheArgument()
    {
        using QLoraContext ctx = Context(QLoraBackend.Cpu);
        float[] x = Data(seed: 9);
        var shape = Assert.Throws<ArgumentException>(() => Q4Tensor.Quantize(ctx, x, Rows, Cols + 1));
        var rows = Assert.Throws<ArgumentOutOfRangeException>(() => Q4Tensor.Quantize(ctx, x, 0, Cols));
        using Q4Tensor t = Q4Tensor.Quantize(ctx, x, Rows, Cols);
        var dst = Assert.Throws<ArgumentException>(() => t.Dequantize(ctx, new float[10]));
        Assert.Multiple(() =>
        {
            Assert.That(shape!.ParamName, Is.EqualTo("source"));
            Assert.That(shape.Message, Does.Contain("source has 3663 elements but the shape [37, 100] needs 3700"));
            Assert.That(rows!.ParamName, Is.EqualTo("rows"));
            Assert.That(dst!.ParamName, Is.EqualTo("destination"));
            Assert.Throws<ArgumentNullException>(() => Q4Tensor.Quantize(null!, x, Rows, Cols));
        });
    }

    [Test]
    public void Info_ReportsBitsPerParameter()
    {
        using QLoraContext ctx = Context(QLoraBackend.Cpu);
        float[] x = Oracle.Normal(256 * 256, seed: 10);
        using Q4Tensor dq = Q4Tensor.Quantize(ctx, x, 256, 256);
        using Q4Tensor plain = Q4Tensor.Quantize(ctx, x, 256, 256, new QuantParams { DoubleQuant = false });
        Assert.Multiple(() =>
        {
            // 4 + 8/64 + 32/(64*256) bits, plus the one fp32 offset spread over 65536 parameters.
            Assert.That(dq.Info.BitsPerParameter, Is.EqualTo(4 + 8.0 / 64 + 32.0 / (64 * 256) + 32.0 / 65536).Within(1e-12));
            Assert.That(plain.Info.BitsPerParameter, Is.EqualTo(4.5).Within(1e-12));
            Assert.That(dq.Info.Params, Is.EqualTo(QuantParams.Default));
            Assert.That(dq.ToString(), Is.EqualTo("Q4Tensor([256, 256], Nf4, block 64, DQ)"));
        });
    }

    [Test]
    public void CodeTables_AreTheBitsandbytesTables()
    {
        Assert.Multiple(() =>
        {
            Assert.That(Q4Tensor.CodeTable(QLoraQuantType.Nf4), Is.EqualTo(Oracle.Nf4.Select(v => (float)v).ToArray()));
            Assert.That(Q4Tensor.CodeTable(QLoraQuantType.Fp4), Is.EqualTo(Oracle.Fp4.Select(v => (float)v).ToArray()));
        });
    }

    [Test]
    public void QuantParams_DefaultsComeFromTheNativeCore()
    {
        var d = new QuantParams();
        Assert.Multiple(() =>
        {
            Assert.That(d.QuantType, Is.EqualTo(QLoraQuantType.Nf4));
            Assert.That(d.BlockSize, Is.EqualTo(64));
            Assert.That(d.DoubleQuant, Is.True);
            Assert.That(d.NestedBlockSize, Is.EqualTo(256));
        });
    }
}
