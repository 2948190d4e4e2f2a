using QLoRA.Models;
using QLoRA.Native;
using QLoRA.Training;

using TorchSharp;
using TorchSharp.Modules;

using static TorchSharp.torch;

namespace QLoRA.Tests.Training;

public class PagedAdamWTests
{
    [OneTimeSetUp]
    public void Load() => TorchRuntime.EnsureLoaded();

    private static (Parameter P, double[] Ref) Param(int n, int seed)
    {
        var rng = new Random(seed);
        float[] v = Enumerable.Range(0, n).Select(_ => (float)(rng.NextDouble() * 2 - 1)).ToArray();
        return (new Parameter(tensor(v), requires_grad: true), v.Select(x => (double)x).ToArray());
    }

    [Test]
    public void ChoosesPagesSmallEnoughThatSmallBuffersAreNotMostlyPadding()
    {
        // 24 buffers shaped like LoRA A of a 125M model (64 x 576): 288 KiB of 32-bit states each.
        var ps = Enumerable.Range(0, 24).Select(i => ($"a{i}", new Parameter(randn(64, 576), requires_grad: true))).ToList();
        using var unpaged = new PagedAdamW(ps, new PagedAdamWOptions(), NativeRuntime.Context);
        using var paged = new PagedAdamW(ps, new PagedAdamWOptions { PagerBudgetBytes = long.MaxValue }, NativeRuntime.Context);
        using var mib = new PagedAdamW(ps, new PagedAdamWOptions { PagerBudgetBytes = long.MaxValue, PageBytes = 1L << 20 },
            NativeRuntime.Context);
        long exact = unpaged.Info.StateBytes;
        Assert.That(exact, Is.EqualTo(24L * 64 * 576 * 8), "unpaged: m and v in fp32");
        Assert.That(unpaged.PageBytes, Is.Null);
        Assert.That(paged.PageBytes, Is.EqualTo(64L << 10), "128 KiB pages would round 288 KiB up to 384");
        Assert.That(paged.Info.StateBytes, Is.EqualTo(24L * (5 << 16)), "five 64 KiB pages per buffer");
        Assert.That(mib.Info.StateBytes, Is.EqualTo(24L << 20), "an explicit 1 MiB page: one page per buffer");

        // Large buffers keep 1 MiB pages; 8-bit states are about a quarter of the bytes.
        Assert.That(PagedAdamW.ChoosePageBytes([4096L * 4096, 64L * 4096], eightBit: false), Is.EqualTo(1L << 20));
        Assert.That(PagedAdamW.ChoosePageBytes([64L * 576], eightBit: true), Is.EqualTo(64L << 10));
        Assert.That(PagedAdamW.ChoosePageBytes([4L << 20], eightBit: true), Is.EqualTo(1L << 20)); // 8.125 MiB in 9 pages
        Assert.That(PagedAdamW.ChoosePageBytes([1L << 20], eightBit: true), Is.EqualTo(256L << 10)); // 2.03 MiB: 9 x 256 KiB
    }

    [Test]
    public void FollowsAFloat64AdamWWithGlobalNormClippingAndWorksInPlace()
    {
        var (p1, r1) = Param(300, 1);
        var (p2, r2) = Param(77, 2);
        var refs = new[] { r1, r2 };
        var m = refs.Select(r => new double[r.Length]).ToArray();
        var v = refs.Select(r => new double[r.Length]).ToArray();
        const double lr = 0.01, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.01, clip = 0.3;
        IntPtr before = TensorViews.DataPointer(p1);
        using var opt = new PagedAdamW([("a", p1), ("b", p2)],
            new PagedAdamWOptions { LearningRate = (float)lr, WeightDecay = (float)wd, MaxGradNorm = (float)clip }, NativeRuntime.Context);
        var rng = new Random(3);
        for (int step = 1; step <= 5; step++)
        {
            opt.ZeroGrad();
            var grads = refs.Select(r => r.Select(_ => (rng.NextDouble() * 2 - 1) * 0.5).ToArray()).ToArray();
            using (var loss = (p1 * tensor(grads[0].Select(g => (float)g).ToArray())).sum() + (p2 * tensor(grads[1].Select(g => (float)g).ToArray())).sum())
                loss.backward();
            var info = opt.Step();

            double norm = Math.Sqrt(grads.Sum(g => g.Sum(x => (double)(float)x * (float)x)));
            double scale = norm > clip ? clip / (norm + 1e-6) : 1;
            Assert.That(info.Step, Is.EqualTo(step));
            Assert.That(info.GradNorm, Is.EqualTo(norm).Within(1e-6 * norm));
            for (int b = 0; b < 2; b++)
                for (int i = 0; i < refs[b].Length; i++)
                {
                    double g = (float)grads[b][i] * scale;
                    m[b][i] = b1 * m[b][i] + (1 - b1) * g;
                    v[b][i] = b2 * v[b][i] + (1 - b2) * g * g;
                    double mh = m[b][i] / (1 - Math.Pow(b1, step)), vh = v[b][i] / (1 - Math.Pow(b2, step));
                    refs[b][i] -= lr * mh / (Math.Sqrt(vh) + eps);
                    refs[b][i] *= 1 - lr * wd;
                }
        }
        Assert.That(TensorViews.DataPointer(p1), Is.EqualTo(before), "updated in place");
        for (int b = 0; b < 2; b++)
        {
            float[] got = (b == 0 ? p1 : p2).data<float>().ToArray();
            for (int i = 0; i < got.Length; i++)
                Assert.That(got[i], Is.EqualTo(refs[b][i]).Within(2e-5), $"buffer {b}[{i}]");
        }
    }

    [Test]
    public void PagedEightBitAndUnpagedRunsAgreeAndStateRoundTrips()
    {
        string dir = Directory.CreateTempSubdirectory("qlora-opt-").FullName;
        try
        {
            float[]? snapshot = null;
            float[] Run(bool eightBit, long? budget, int steps, string? save = null)
            {
                var (p, _) = Param(70_000, 4);
                using var opt = new PagedAdamW([("p", p)], new PagedAdamWOptions
                {
                    LearningRate = 1e-3f, EightBit = eightBit, PagerBudgetBytes = budget, PageBytes = budget is null ? null : 4096, SpillDirectory = dir,
                }, NativeRuntime.Context);
                for (int s = 0; s < steps; s++)
                {
                    opt.ZeroGrad();
                    var g = Enumerable.Range(0, 70_000).Select(i => MathF.Sin(i * 0.37f + s)).ToArray();
                    using (var loss = (p * tensor(g)).sum()) loss.backward();
                    opt.Step();
                    if (save is not null && s == 2)
                    {
                        opt.Save(save);
                        snapshot = p.data<float>().ToArray();
                    }
                }
                if (budget is not null) Assert.That(opt.PagerStats!.Value.PeakResidentBytes, Is.LessThanOrEqualTo(budget.Value));
                return p.data<float>().ToArray();
            }
            float[] plain = Run(false, null, 6);
            float[] paged = Run(false, 64 * 1024, 6);   // state is 560 KB: about 11% resident
            Assert.That(paged, Is.EqualTo(plain), "paging changes nothing");
            float[] q8 = Run(true, null, 6);
            double diff = plain.Zip(q8).Max(t => Math.Abs(t.First - t.Second));
            Assert.That(diff, Is.LessThan(2e-3), "8-bit states follow 32-bit closely");
            Assert.That(diff, Is.GreaterThan(0), "8-bit states are really 8-bit");

            string state = Path.Combine(dir, "opt.bin");
            Run(false, null, 3, save: state);
            var (resumed, _) = Param(70_000, 4);
            float[] saved = snapshot!;
            // Continue from the saved parameters and state for steps 3..5.
            float[] cont;
            {
                using (no_grad()) resumed.copy_(tensor(saved));
                using var opt = new PagedAdamW([("p", resumed)], new PagedAdamWOptions { LearningRate = 1e-3f }, NativeRuntime.Context);
                opt.Load(state);
                Assert.That(opt.Info.Step, Is.EqualTo(3));
                for (int s = 3; s < 6; s++)
                {
                    opt.ZeroGrad();
                    var g = Enumerable.Range(0, 70_000).Select(i => MathF.Sin(i * 0.37f + s)).ToArray();
                    using (var loss = (resumed * tensor(g)).sum()) loss.backward();
                    opt.Step();
                }
                cont = resumed.data<float>().ToArray();
            }
            Assert.That(cont, Is.EqualTo(plain), "save -> load -> continue equals never stopping");
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void RefusesWhatItCannotUse()
    {
        using var p16 = new Parameter(zeros([4], ScalarType.BFloat16), requires_grad: true);
        Assert.That(Assert.Throws<ArgumentException>(() => new PagedAdamW([("x.lora_A", p16)], new PagedAdamWOptions(), NativeRuntime.Context))!.Message,
                    Does.Contain("x.lora_A").And.Contain("BFloat16"));
        var (p, _) = Param(10, 5);
        using var opt = new PagedAdamW([("p", p)], new PagedAdamWOptions(), NativeRuntime.Context);
        using (var loss = (p * float.NaN).sum()) loss.backward();
        var e = Assert.Throws<QLoraException>(() => opt.Step());
        Assert.That(e!.Message, Does.Contain("finite"));
        Assert.Throws<QLoraException>(() => new PagedAdamW([("p", p)], new PagedAdamWOptions { PagerBudgetBytes = 100 }, NativeRuntime.Context));
    }
}
