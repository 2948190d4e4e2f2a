using System.Runtime.InteropServices;

using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Training;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Tests.Training;

public class GradientCheckpointingTests
{
    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [DllImport("libc", EntryPoint = "mallinfo2")]
    private static extern MallInfo2 mallinfo2();

    // Bytes of the C heap in use (small-block arenas + mmap'd blocks): where libtorch's CPU tensors live.
    private static long HeapInUse()
    {
        var m = mallinfo2();
        return (long)(m.Uordblks + m.Hblkhd);
    }

    private static Dictionary<string, float[]> Grads(LoraModel lora, Tensor ids, bool checkpoint)
    {
        GradientCheckpointing.Enable(lora.Model, checkpoint);
        foreach (var (_, p) in lora.Parameters()) p.grad?.zero_();
        manual_seed(123);
        lora.Model.train();
        using (var logits = lora.Model.call(ids))
        using (var loss = logits.pow(2).mean())
            loss.backward();
        return lora.Parameters().ToDictionary(p => p.Name, p => p.Parameter.grad!.data<float>().ToArray());
    }

    [TestCase("none")]
    [TestCase("nf4")]
    public void GradientsEqualTheNonCheckpointedOnes(string quant)
    {
        using var model = TinyModels.Build(3, QuantSpec.Parse(quant));
        var lora = LoraModel.Inject(model, new LoraOptions { Rank = 4, Dropout = 0.2 }, 5);
        using (no_grad())
            foreach (var (_, l) in lora.Layers) l.B.normal_(0, 0.05);   // non-zero B, so that gradients reach every A
        using var ids = randint(3, TinyModels.Vocab, [2, 24], generator: new Generator(9));
        var plain = Grads(lora, ids, checkpoint: false);
        var ckpt = Grads(lora, ids, checkpoint: true);
        Assert.That(GradientCheckpointing.IsEnabled(model));
        foreach (var (name, g) in plain)
        {
            Assert.That(g.Any(v => v != 0), $"{name} has a gradient");
            float scale = g.Max(MathF.Abs);
            var c = ckpt[name];
            for (int i = 0; i < g.Length; i++)
                Assert.That(c[i], Is.EqualTo(g[i]).Within(1e-5f * scale + 1e-12f), $"{name}[{i}]");
        }
        // The generator continues as if nothing had been recomputed.
        manual_seed(123);
        using (no_grad()) model.train();
        GradientCheckpointing.Enable(model, false);
    }

    [Test]
    public void ActivationMemoryDrops()
    {
        using var model = TinyModels.Build(4, QuantSpec.Nf4, dim: 128);
        var lora = LoraModel.Inject(model, new LoraOptions { Rank = 8, Dropout = 0.1 }, 5);
        using var ids = randint(3, TinyModels.Vocab, [8, 96], generator: new Generator(9));
        long Activations(bool checkpoint)
        {
            GradientCheckpointing.Enable(model, checkpoint);
            model.train();
            using var scope = NewDisposeScope();   // every temporary of this pass is freed when it ends
            GC.Collect();
            GC.WaitForPendingFinalizers();
            long before = HeapInUse();
            var logits = model.call(ids);
            var loss = logits.pow(2).mean();
            long held = HeapInUse() - before;   // what the graph keeps for backward (plus the logits)
            loss.backward();
            return held;
        }
        Activations(false);   // warm-up (lazy allocations, RoPE tables, gradient buffers)
        Activations(true);
        long plain = Activations(false);
        long ckpt = Activations(true);
        TestContext.Out.WriteLine($"activation memory: plain {plain / 1024} KiB, checkpointed {ckpt / 1024} KiB ({(double)ckpt / plain:F2}x)");
        Assert.That(ckpt, Is.GreaterThan(0), "the checkpointed graph still keeps each layer's input and the logits");
        Assert.That(ckpt, Is.LessThan(plain * 6 / 10), $"checkpointed {ckpt} bytes vs plain {plain} bytes");
    }
}
