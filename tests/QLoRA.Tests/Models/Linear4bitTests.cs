using QLoRA.Models;
using QLoRA.Native;
using QLoRA.Native.Interop;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Tests.Models;

/// <summary>
/// <see cref="Linear4bit"/>'s fused forward and backward against torch (F.linear and autograd) on the
/// dequantized weight, on random data, with contiguous and strided activations, fp32 and bf16.
/// </summary>
public class Linear4bitTests
{
    [OneTimeSetUp]
    public void Load() => TorchRuntime.EnsureLoaded();

    private static Linear4bit RandomLayer(long outF, long inF, QuantSpec spec, int seed)
    {
        var rng = new Random(seed);
        var w = new float[outF * inF];
        for (int i = 0; i < w.Length; i++) w[i] = (float)(rng.NextDouble() * 2 - 1) * 0.05f;
        var q = Q4Tensor.Quantize(NativeRuntime.Context, w, outF, inF, spec.ToParams());
        return new Linear4bit(q);
    }

    private static double RelErr(Tensor a, Tensor b) =>
        (a.to(ScalarType.Float64) - b.to(ScalarType.Float64)).abs().max().item<double>() / b.to(ScalarType.Float64).abs().max().item<double>();

    [TestCase("nf4", 96, 160)]
    [TestCase("fp4", 64, 200)]
    [TestCase("int4", 130, 64)]
    public void ForwardEqualsLinearOnTheDequantizedWeight(string quant, int outF, int inF)
    {
        using var layer = RandomLayer(outF, inF, QuantSpec.Parse(quant), 11);
        using var w = layer.DequantizedWeight();
        manual_seed(1);
        using var x = randn(3, 7, inF);
        using var y = layer.forward(x);
        using var expect = nn.functional.linear(x, w);
        Assert.That(y.shape, Is.EqualTo(new long[] { 3, 7, outF }));
        Assert.That(RelErr(y, expect), Is.LessThan(1e-5));
        // A strided view (every other row of a wider buffer, columns offset by 3) is used in place.
        using var wide = randn(10, inF + 8);
        using var view = wide.narrow(1, 3, inF).index_select(0, arange(0, 10, 2)).narrow(0, 0, 5);
        using var strided = wide.narrow(1, 3, inF);
        Assert.That(TensorViews.IsRowView(strided), Is.True);
        Assert.That(strided.is_contiguous(), Is.False);
        using var ys = layer.forward(strided);
        using var es = nn.functional.linear(strided.contiguous(), w);
        Assert.That(RelErr(ys, es), Is.LessThan(1e-5));
        // A transposed (column-major) input is not a row view: it is copied, and still right.
        using var t = randn(inF, 4).t();
        Assert.That(TensorViews.IsRowView(t), Is.False);
        using var yt = layer.forward(t);
        Assert.That(RelErr(yt, nn.functional.linear(t.contiguous(), w)), Is.LessThan(1e-5));
    }

    [Test]
    public void BackwardGivesTorchAutogradsInputGradientAndNoWeightGradient()
    {
        using var layer = RandomLayer(72, 136, QuantSpec.Nf4, 21);
        using var w = layer.DequantizedWeight();
        manual_seed(2);
        using var x0 = randn(2, 5, 136);
        using var g = randn(2, 5, 72);

        using var x1 = x0.clone().requires_grad_(true);
        using var y1 = layer.forward(x1);
        Assert.That(y1.requires_grad, Is.True);
        (y1 * g).sum().backward();

        using var x2 = x0.clone().requires_grad_(true);
        using var wRef = w.clone().requires_grad_(false);
        using var y2 = nn.functional.linear(x2, wRef);
        (y2 * g).sum().backward();

        Assert.That(RelErr(x1.grad!, x2.grad!), Is.LessThan(1e-5), "dX = dY W");
        Assert.That(layer.parameters().Count(), Is.EqualTo(0), "the 4-bit weight is not a trainable parameter");
        // Through a two-layer chain (the second input needs grad only through the first layer).
        using var layer2 = RandomLayer(40, 72, QuantSpec.Nf4, 22);
        using var w2 = layer2.DequantizedWeight();
        using var x3 = x0.clone().requires_grad_(true);
        layer2.forward(nn.functional.silu(layer.forward(x3))).sum().backward();
        using var x4 = x0.clone().requires_grad_(true);
        nn.functional.linear(nn.functional.silu(nn.functional.linear(x4, w)), w2).sum().backward();
        Assert.That(RelErr(x3.grad!, x4.grad!), Is.LessThan(1e-4), "chained gradient");
    }

    [Test]
    public void Bf16ActivationsGiveBf16OutputsAndGradients()
    {
        using var layer = RandomLayer(64, 128, QuantSpec.Nf4, 31);
        using var w = layer.DequantizedWeight();
        manual_seed(3);
        using var xf = randn(4, 128);
        using var xb = xf.to(ScalarType.BFloat16).requires_grad_(true);
        using var y = layer.forward(xb);
        Assert.That(y.dtype, Is.EqualTo(ScalarType.BFloat16));
        using var expect = nn.functional.linear(xb.detach().to(ScalarType.Float32), w);
        Assert.That(RelErr(y, expect), Is.LessThan(2e-2), "bf16 forward vs fp32 on the same inputs");
        y.sum().backward();
        Assert.That(xb.grad!.dtype, Is.EqualTo(ScalarType.BFloat16));
        using var gExpect = w.sum([0L]).expand(4, 128); // sum over out_features (sum(0) would be a dtype overload)
        Assert.That(RelErr(xb.grad!, gExpect), Is.LessThan(2e-2));
    }

    [Test]
    public void Int8ActivationsApproximateTheForwardOfADecodeStepOnly()
    {
        using var layer = RandomLayer(200, 384, QuantSpec.Nf4, 51);
        using var w = layer.DequantizedWeight();
        manual_seed(5);
        using var x = randn(1, 384);
        using var exact = layer.forward(x);
        layer.Int8Activations = true;
        using var approx = layer.forward(x);
        using var expect = nn.functional.linear(x, w);
        // x rounded to steps of amax/127 per 32 elements, the code table to steps of 1/127: about 1 % here.
        Assert.That(RelErr(approx, expect), Is.LessThan(3e-2));
        bool kernel = NativeMethods.qlora_cpu_isa_detected() >= QLoraCpuIsa.Avx512Bf16;
        Assert.That(RelErr(approx, exact), kernel ? Is.GreaterThan(0.0) : Is.EqualTo(0.0),
            "the int8 kernel runs only on AVX512-BF16 (+VNNI) CPUs; elsewhere the flag changes nothing");
        // More than 8 rows (a prompt's prefill) and inputs that need a gradient stay exact.
        using var rows = randn(9, 384);
        using var rowsExact = nn.functional.linear(rows, w);
        Assert.That(RelErr(layer.forward(rows), rowsExact), Is.LessThan(1e-5));
        using var xg = x.clone().requires_grad_(true);
        Assert.That(RelErr(layer.forward(xg).detach(), exact), Is.EqualTo(0.0));
    }

    [Test]
    public void WrongShapesAndDtypesAreRejectedWithAMessage()
    {
        using var layer = RandomLayer(32, 64, QuantSpec.Nf4, 41);
        using var bad = randn(3, 63);
        var e = Assert.Throws<ArgumentException>(() => layer.forward(bad));
        Assert.That(e!.Message, Does.Contain("64").And.Contain("63"));
        using var ints = ones(2, 64, ScalarType.Int32);
        Assert.Throws<ArgumentException>(() => layer.forward(ints));
    }
}
