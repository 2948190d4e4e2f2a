using QLoRA.Lora;
using QLoRA.Models;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Tests.Training;

public class LoraLinearTests
{
    [OneTimeSetUp]
    public void Load() => TorchRuntime.EnsureLoaded();

    private static float[] Random(int n, int seed, double scale = 1)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)((rng.NextDouble() * 2 - 1) * scale)).ToArray();
    }

    private static FrozenLinear Base(float[] w, int outF, int inF, QuantSpec quant)
    {
        using var t = tensor(w, [outF, inF]);
        return ModelLoader.MakeLinear(TensorViews.RowView(t), outF, inF, quant, ScalarType.Float32);
    }

    [TestCase("none", false)]
    [TestCase("nf4", false)]
    [TestCase("nf4", true)]
    public void ForwardEqualsFloat64Computation(string quant, bool rslora)
    {
        const int n = 5, inF = 64, outF = 48, r = 8;
        var opts = new LoraOptions { Rank = r, Alpha = 16, Dropout = 0, UseRsLora = rslora };
        using var layer = new LoraLinear(Base(Random(outF * inF, 1, 0.5), outF, inF, QuantSpec.Parse(quant)), opts);
        float[] b = Random(outF * r, 2, 0.3);
        using (no_grad()) layer.B.copy_(tensor(b, [outF, r]));
        float[] x = Random(n * inF, 3);
        float[] a = layer.A.data<float>().ToArray();
        // The base weight as the layer computes it (dequantized for 4-bit): the LoRA math is what is checked here.
        using var wt = layer.BaseLayer.DequantizedWeight();
        float[] w = wt.data<float>().ToArray();
        using var xt = tensor(x, [n, inF]);
        using var y = layer.call(xt);
        float[] got = y.data<float>().ToArray();
        double scale = rslora ? 16 / Math.Sqrt(r) : 16.0 / r;
        Assert.That(layer.Options.Scale, Is.EqualTo(scale));
        for (int i = 0; i < n; i++)
            for (int o = 0; o < outF; o++)
            {
                double baseY = 0;
                for (int k = 0; k < inF; k++) baseY += (double)x[i * inF + k] * w[o * inF + k];
                double lora = 0;
                for (int j = 0; j < r; j++)
                {
                    double h = 0;
                    for (int k = 0; k < inF; k++) h += (double)x[i * inF + k] * a[j * inF + k];
                    lora += h * b[o * r + j];
                }
                double expect = baseY + scale * lora;
                Assert.That(got[i * outF + o], Is.EqualTo(expect).Within(2e-4 * (1 + Math.Abs(expect))), $"y[{i},{o}]");
            }
    }

    [Test]
    public void InitializesAsPeftDoes()
    {
        const int inF = 100, outF = 30, r = 16;
        using var layer = new LoraLinear(Base(Random(outF * inF, 4), outF, inF, QuantSpec.None), new LoraOptions { Rank = r });
        Assert.That(layer.A.shape, Is.EqualTo(new long[] { r, inF }));
        Assert.That(layer.B.shape, Is.EqualTo(new long[] { outF, r }));
        Assert.That(layer.B.abs().max().item<float>(), Is.EqualTo(0f), "B starts at zero");
        float bound = 1 / MathF.Sqrt(inF);   // kaiming_uniform_(a = sqrt(5))
        float[] a = layer.A.data<float>().ToArray();
        Assert.That(a.Max(), Is.LessThanOrEqualTo(bound).And.GreaterThan(0.9f * bound));
        Assert.That(a.Min(), Is.GreaterThanOrEqualTo(-bound).And.LessThan(-0.9f * bound));
        double var = a.Select(v => (double)v * v).Average();
        Assert.That(var, Is.EqualTo(bound * bound / 3.0).Within(0.1 * bound * bound / 3.0), "variance of U(-b, b)");
        Assert.That(layer.BaseLayer.parameters().All(p => !p.requires_grad), "the base stays frozen");
    }

    [TestCase("none")]
    [TestCase("nf4")]
    [TestCase("fp4")]
    public void GradientsMatchAutogradOnADenseFloat64Reference(string quant)
    {
        const int n = 6, inF = 64, outF = 32, r = 4;
        var opts = new LoraOptions { Rank = r, Alpha = 8, Dropout = 0 };
        using var layer = new LoraLinear(Base(Random(outF * inF, 5, 0.5), outF, inF, QuantSpec.Parse(quant)), opts);
        using (no_grad()) layer.B.copy_(tensor(Random(outF * r, 6, 0.3), [outF, r]));
        using var x = tensor(Random(n * inF, 7), [n, inF]).requires_grad_(true);
        using var g = tensor(Random(n * outF, 8), [n, outF]);
        using (var y = layer.call(x))
        using (var loss = (y * g).sum())
            loss.backward();

        // Reference: the same function in float64 with plain torch ops on the dense (dequantized) weight.
        using var w64 = layer.BaseLayer.DequantizedWeight().to(ScalarType.Float64);
        using var a64 = layer.A.detach().to(ScalarType.Float64).requires_grad_(true);
        using var b64 = layer.B.detach().to(ScalarType.Float64).requires_grad_(true);
        using var x64 = x.detach().to(ScalarType.Float64).requires_grad_(true);
        using (var y64 = x64.matmul(w64.t()) + x64.matmul(a64.t()).matmul(b64.t()) * opts.Scale)
        using (var loss64 = (y64 * g.to(ScalarType.Float64)).sum())
            loss64.backward();

        void Close(Tensor got, Tensor expect, string what)
        {
            double err = (got.to(ScalarType.Float64) - expect).abs().max().item<double>();
            double mag = expect.abs().max().item<double>();
            Assert.That(err, Is.LessThan(1e-5 * (1 + mag)), $"{what}: max error {err} (max |value| {mag})");
        }
        Close(layer.A.grad!, a64.grad!, "dL/dA");
        Close(layer.B.grad!, b64.grad!, "dL/dB");
        Close(x.grad!, x64.grad!, "dL/dx");
        Assert.That(layer.A.grad!.abs().max().item<float>(), Is.GreaterThan(0f));
    }

    [Test]
    public void Bf16ComputeFollowsFp32()
    {
        const int n = 4, inF = 64, outF = 64, r = 8;
        var w = Random(outF * inF, 9, 0.5);
        using var f32 = new LoraLinear(Base(w, outF, inF, QuantSpec.Nf4), new LoraOptions { Rank = r, Dropout = 0 });
        using var bf16 = new LoraLinear(Base(w, outF, inF, QuantSpec.Nf4), new LoraOptions { Rank = r, Dropout = 0, ComputeDtype = ScalarType.BFloat16 });
        using (no_grad())
        {
            var b = tensor(Random(outF * r, 10, 0.3), [outF, r]);
            f32.B.copy_(b);
            bf16.B.copy_(b);
            bf16.A.copy_(f32.A);
        }
        using var x = tensor(Random(n * inF, 11), [n, inF]);
        using var y32 = f32.call(x);
        using var y16 = bf16.call(x.to(ScalarType.BFloat16));
        Assert.That(y16.dtype, Is.EqualTo(ScalarType.BFloat16));
        double rel = (y16.to(ScalarType.Float32) - y32).norm().item<float>() / y32.norm().item<float>();
        Assert.That(rel, Is.LessThan(0.02), "bf16 has 8 significant bits");
        using (var loss = y16.to(ScalarType.Float32).sum()) loss.backward();
        Assert.That(bf16.A.grad!.dtype, Is.EqualTo(ScalarType.Float32), "fp32 master weights get fp32 gradients");
    }

    [Test]
    public void DropoutIsOnlyActiveInTraining()
    {
        using var layer = new LoraLinear(Base(Random(16 * 16, 12), 16, 16, QuantSpec.None), new LoraOptions { Rank = 4, Dropout = 0.5 });
        using (no_grad()) layer.B.copy_(tensor(Random(16 * 4, 13), [16, 4]));
        using var x = tensor(Random(8 * 16, 14), [8, 16]);
        layer.eval();
        using var e1 = layer.call(x);
        using var e2 = layer.call(x);
        Assert.That(e1.allclose(e2, 0, 0), "eval is deterministic");
        layer.train();
        using var t1 = layer.call(x);
        Assert.That(t1.allclose(e1, 0, 0), Is.False, "training applies dropout");
    }

    [Test]
    public void MergedWeightIsBasePlusScaledBA()
    {
        const int inF = 32, outF = 16, r = 4;
        var w = Random(outF * inF, 15);
        using var layer = new LoraLinear(Base(w, outF, inF, QuantSpec.None), new LoraOptions { Rank = r, Alpha = 12 });
        var b = Random(outF * r, 16);
        using (no_grad()) layer.B.copy_(tensor(b, [outF, r]));
        float[] a = layer.A.data<float>().ToArray();
        using var merged = layer.MergedWeight();
        float[] m = merged.data<float>().ToArray();
        for (int o = 0; o < outF; o++)
            for (int k = 0; k < inF; k++)
            {
                double ba = 0;
                for (int j = 0; j < r; j++) ba += (double)b[o * r + j] * a[j * inF + k];
                Assert.That(m[o * inF + k], Is.EqualTo(w[o * inF + k] + 3.0 * ba).Within(1e-5));
            }
    }

    [Test]
    public void BadOptionsAreRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new LoraOptions { Rank = 0 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new LoraOptions { Dropout = 1 }.Validate());
        Assert.Throws<ArgumentOutOfRangeException>(() => new LoraOptions { Alpha = double.NaN }.Validate());
        using var model = TinyModels.Build(1, QuantSpec.None);
        var e = Assert.Throws<ArgumentException>(() => LoraModel.Inject(model, new LoraOptions { TargetModules = ["qkv_proj"] }, 0));
        Assert.That(e!.Message, Does.Contain("qkv_proj").And.Contain("q_proj"));
    }

    [Test]
    public void InjectsIntoChosenOrAllLinearLayers()
    {
        using var all = TinyModels.Build(1, QuantSpec.Nf4);
        var lora = LoraModel.Inject(all, new LoraOptions { Rank = 4 }, 7);
        Assert.That(lora.Layers, Has.Count.EqualTo(2 * 7));
        Assert.That(lora.Layers[0].Name, Is.EqualTo("model.layers.0.self_attn.q_proj"));
        Assert.That(all.parameters().Where(p => p.requires_grad).Count(), Is.EqualTo(2 * 14), "only A and B train");
        Assert.That(lora.TargetModuleNames, Is.EqualTo(LoraOptions.AllLinear));

        using var some = TinyModels.Build(1, QuantSpec.Nf4);
        var qv = LoraModel.Inject(some, new LoraOptions { Rank = 4, TargetModules = ["q_proj", "v_proj"] }, 7);
        Assert.That(qv.Layers.Select(l => l.Name.Split('.')[^1]).Distinct(), Is.EqualTo(new[] { "q_proj", "v_proj" }));
        Assert.That(qv.Layers, Has.Count.EqualTo(4));
        // Same seed, same A.
        Assert.That(qv.Layers[0].Layer.A.allclose(lora.Layers[0].Layer.A, 0, 0), Is.True);
    }
}
