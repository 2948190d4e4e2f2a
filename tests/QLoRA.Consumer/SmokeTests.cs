using QLoRA;
using QLoRA.Native;
using QLoRA.Native.Interop;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Consumer;

/// <summary>
/// Quantize-and-train smoke test through the packages only: the native core from QLoRA.Runtime.linux-x64,
/// the bindings from QLoRA.Native, and TorchSharp (made loadable by the QLoRA package's buildTransitive target).
/// </summary>
public class SmokeTests
{
    // Largest half-gap between neighbouring NF4 codes (between -1 and -0.6961928): the rounding error of
    // one element relative to its block's absmax.
    private const double Nf4HalfGap = (1.0 - 0.6961928009986877) / 2;

    // Absolute error of one double-quantized block scale, relative to the largest scale: half the widest gap
    // of the signed 8-bit dynamic map (between 0.99296875 and 1.0).
    private const double ScaleHalfGap = (1.0 - 0.992968738079071) / 2;

    private static float[] Normal(int n, double std, int seed)
    {
        var rng = new Random(seed);
        var x = new float[n];
        for (int i = 0; i < n; i++)
            x[i] = (float)(std * Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        return x;
    }

    [Test]
    public void QuantizedMatrixDequantizesWithinTheCodeSpacing()
    {
        const int rows = 96, cols = 200, block = 64;
        float[] w = Normal(rows * cols, 1.0, 11);
        using var ctx = QLoraContext.Create();
        Assert.That(QLoraNativeLibrary.LoadedPath, Does.Contain("runtimes"), "the native core comes from the runtime package");

        using var q = Q4Tensor.Quantize(ctx, w, rows, cols);
        Assert.That(q.Info.Params.QuantType, Is.EqualTo(QLoraQuantType.Nf4));
        Assert.That(q.Info.Params.DoubleQuant, Is.True);
        Assert.That(q.Info.BitsPerParameter, Is.InRange(4.125, 4.135));
        float[] back = q.Dequantize(ctx);

        double maxScale = 0;
        var scale = new double[(w.Length + block - 1) / block];
        for (int i = 0; i < w.Length; i++) scale[i / block] = Math.Max(scale[i / block], Math.Abs(w[i]));
        foreach (double s in scale) maxScale = Math.Max(maxScale, s);
        double err2 = 0;
        for (int i = 0; i < w.Length; i++)
        {
            double e = Math.Abs(back[i] - (double)w[i]);
            err2 += e * e;
            double bound = Nf4HalfGap * scale[i / block] + ScaleHalfGap * maxScale + 1e-6;
            if (e > bound) Assert.Fail($"element {i}: |{back[i]} - {w[i]}| = {e} exceeds {bound}");
        }
        double rmse = Math.Sqrt(err2 / w.Length);
        Assert.That(rmse, Is.GreaterThan(0), "4-bit storage cannot be lossless on normal data");

        using var fp4 = Q4Tensor.Quantize(ctx, w, rows, cols, new QuantParams { QuantType = QLoraQuantType.Fp4 });
        float[] backFp4 = fp4.Dequantize(ctx);
        double fp4Err2 = 0;
        for (int i = 0; i < w.Length; i++) fp4Err2 += Math.Pow(backFp4[i] - (double)w[i], 2);
        Assert.That(rmse, Is.LessThan(Math.Sqrt(fp4Err2 / w.Length)), "NF4 fits normal data better than FP4");
    }

    [Test]
    public void QLoraLayerWithPagedEightBitAdamWLearnsALowRankUpdate()
    {
        // The package's own QLoRA pieces: a frozen NF4 + double-quant base computed by the fused native
        // kernels (Linear4bit), a LoRA branch initialized as PEFT does (LoraLinear), and the native paged
        // 8-bit AdamW whose states live in a pager with a one-page budget (spilling to a file).
        TorchRuntime.EnsureLoaded();
        const int n = 256, inF = 64, outF = 32, rank = 4;
        torch.manual_seed(5);
        using var scope = torch.NewDisposeScope();

        float[] w = Normal(outF * inF, 0.1, 21);
        using var ctx = QLoraContext.Create();
        var q = Q4Tensor.Quantize(ctx, w, outF, inF);
        Tensor trueW = torch.tensor(w, [outF, inF]);

        // The task: the original weight plus a rank-2 change (the quantization error is not learnable by rank 4,
        // so the loss floor is the NF4 error, far below the initial loss).
        Tensor delta = torch.matmul(torch.randn(outF, 2) * 0.3, torch.randn(2, inF) * 0.3);
        Tensor x = torch.randn(n, inF);
        Tensor y = torch.matmul(x, (trueW + delta).t());

        using var layer = new QLoRA.Lora.LoraLinear(new QLoRA.Models.Linear4bit(q, ctx),
            new QLoRA.Lora.LoraOptions { Rank = rank, Alpha = 8, Dropout = 0 });
        Assert.That(layer.B.abs().max().item<float>(), Is.EqualTo(0f), "B starts at zero, as in PEFT");
        string spill = Path.Combine(Path.GetTempPath(), "qlora-consumer-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(spill);
        try
        {
            using var opt = new QLoRA.Training.PagedAdamW([("lora_A", layer.A), ("lora_B", layer.B)],
                new QLoRA.Training.PagedAdamWOptions
                {
                    LearningRate = 0.01f, MaxGradNorm = 0, EightBit = true,
                    PagerBudgetBytes = 4096, PageBytes = 4096, SpillDirectory = spill,
                }, ctx);

            double initial = torch.nn.functional.mse_loss(layer.call(x), y).item<float>();
            double last = initial;
            for (int step = 0; step < 300; step++)
            {
                using var stepScope = torch.NewDisposeScope();
                opt.ZeroGrad();
                var loss = torch.nn.functional.mse_loss(layer.call(x), y);
                loss.backward();
                opt.Step();
                last = loss.item<float>();
            }
            TestContext.Out.WriteLine($"QLoRA layer, paged 8-bit AdamW: loss {initial:G4} -> {last:G4}");
            Assert.That(initial, Is.GreaterThan(0.1), "the task must be non-trivial");
            Assert.That(last, Is.LessThan(0.05 * initial));
            Assert.That(layer.B.abs().max().item<float>(), Is.GreaterThan(0f), "B left zero: nothing was trained");
        }
        finally
        {
            Directory.Delete(spill, recursive: true);
        }
    }
}
