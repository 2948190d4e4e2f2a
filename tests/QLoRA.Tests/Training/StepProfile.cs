using System.Diagnostics;

using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Training;

using static TorchSharp.torch;

namespace QLoRA.Tests.Training;

[Explicit("profiling aid: prints the CPU time of each part of a training step on the default model")]
public class StepProfile
{
    [TestCase("nf4")]
    [TestCase("none")]
    public void Profile(string quant)
    {
        var files = DefaultAssets.FetchModel();
        using var loaded = ModelLoader.LoadLlama2c(files.ModelPath, new ModelLoadOptions { Quant = QuantSpec.Parse(quant), TokenizerPath = files.TokenizerPath, RotateHalf = true });
        var lora = LoraModel.Inject(loaded.Model, new LoraOptions { Rank = 64 }, 1);
        using var opt = new PagedAdamW(lora.Parameters(), new PagedAdamWOptions(), NativeRuntime.Context);
        using var ids = randint(3, 32000, [16, 32]);
        using var labels = ids.clone();
        var proc = Process.GetCurrentProcess();
        double Cpu() { proc.Refresh(); return proc.TotalProcessorTime.TotalMilliseconds; }
        loaded.Model.train();
        using (no_grad())
        {
            var w = loaded.Model.LmHead.Weight;
            using var x = randn(512, 288);
            for (int it = 0; it < 3; it++)
            {
                using var scope = NewDisposeScope();
                double a = Cpu(); var t0 = Stopwatch.GetTimestamp();
                var y = x.matmul(w.t());
                double b = Cpu(); var t1 = Stopwatch.GetTimestamp();
                var ls = y.log_softmax(-1);
                double c = Cpu(); var t2 = Stopwatch.GetTimestamp();
                TestContext.Out.WriteLine($"head matmul [512x288]x[288x32000]: cpu {b - a:F0} ms wall {(t1 - t0) * 1000.0 / Stopwatch.Frequency:F0} ms; log_softmax cpu {c - b:F0} ms; threads {get_num_threads()}");
            }
        }
        for (int it = 0; it < 3; it++)
        {
            using var scope = NewDisposeScope();
            double c0 = Cpu(); var w0 = Stopwatch.GetTimestamp();
            var h = loaded.Model.HiddenStates(ids);
            double c1 = Cpu(); var w1 = Stopwatch.GetTimestamp();
            var logits = loaded.Model.LmHead.call(h);
            var loss = nn.functional.cross_entropy(logits.reshape(-1, 32000), labels.reshape(-1));
            double c2 = Cpu(); var w2 = Stopwatch.GetTimestamp();
            opt.ZeroGrad();
            loss.backward();
            double c3 = Cpu(); var w3 = Stopwatch.GetTimestamp();
            opt.Step();
            double c4 = Cpu(); var w4 = Stopwatch.GetTimestamp();
            double Ms(long a, long b) => (b - a) * 1000.0 / Stopwatch.Frequency;
            TestContext.Out.WriteLine($"{quant} it {it}: decoder fwd cpu {c1 - c0:F0} ms (wall {Ms(w0, w1):F0}), head+loss cpu {c2 - c1:F0} (wall {Ms(w1, w2):F0}), " +
                                      $"backward cpu {c3 - c2:F0} (wall {Ms(w2, w3):F0}), optimizer cpu {c4 - c3:F0} (wall {Ms(w3, w4):F0})");
        }
    }
}
