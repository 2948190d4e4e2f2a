using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

using QLoRA.Data;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Native.Interop;
using QLoRA.Training;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Reports;

/// <summary>
/// The training-step benchmark (<c>qlora bench --suite train</c>): forward + backward + optimizer step of QLoRA, LoRA on
/// a bf16 base and LoRA on an fp32 base, on the default model and on LLaMA-shaped models with random weights, each
/// configuration in a child process of its own (<see cref="RunCase"/>) so that peak memories do not pollute each
/// other; and the tables (<see cref="TrainReport"/>).
/// </summary>
public static class TrainBench
{
    /// <summary>
    /// Runs one configuration in this process and returns what it measured. Order: build the model (VmHWM read),
    /// inject LoRA, create the optimizer; then, with the high-water mark reset, <see cref="TrainCase.CheckpointSteps"/>
    /// steps with gradient checkpointing (activation memory and peak with checkpointing); then, reset again,
    /// <see cref="TrainCase.Warmup"/> untimed and <see cref="TrainCase.Steps"/> timed steps without it. A step is what
    /// <see cref="Trainer"/> does: zero-grad, forward with the summed next-token loss (the output head on every
    /// labelled position), backward of the mean, <see cref="PagedAdamW.Step"/> with global-norm clipping 0.3.
    /// </summary>
    public static TrainCaseResult RunCase(TrainCase c, Action<string>? log = null)
    {
        c.Validate();
        string load0 = MachineInfo.LoadAverageNow();
        TorchRuntime.EnsureLoaded();
        var ctx = NativeRuntime.Context;
        using (var warm = ones(64, 64)) using (warm.matmul(warm)) { }   // start libtorch's thread pool
        long runtimeRss = MemoryProbe.Resident();
        var m = c.Method;
        var bm = SyntheticModels.Find(c.Model);

        var sw = Stopwatch.StartNew();
        LoadedModel? loaded = null;
        LlamaForCausalLM model;
        if (bm.IsDefault)
        {
            loaded = ModelLoader.Load("default", new ModelLoadOptions { Quant = m.Quant(), ComputeDtype = m.ComputeDtype(), LoadTokenizer = false, Log = log });
            model = loaded.Model;
        }
        else
            model = SyntheticModels.Build(bm.Config!, m.Quant(), m.ComputeDtype(), c.Seed, log);
        double buildSeconds = sw.Elapsed.TotalSeconds;
        string? spill = null;
        try
        {
            var config = model.Config;
            if (c.SeqLen > config.MaxPositions)
                throw new ArgumentException($"{bm.Label}: sequence length {c.SeqLen} is beyond the model's context ({config.MaxPositions})");
            long buildPeak = MemoryProbe.PeakResident();
            long linearParams = model.LinearLayers().Sum(l => l.Layer.InFeatures * l.Layer.OutFeatures);
            long linearBytes = model.LinearLayers().Sum(l => l.Layer.StorageBytes);
            long parameters = model.ParameterCount();
            long otherBytes = model.WeightBytes() - linearBytes;
            log?.Invoke($"{c}: built {bm.Label} in {buildSeconds:F1} s: {parameters:N0} parameters, linear weights {linearBytes / 1048576.0:F1} MiB " +
                        $"({(double)linearBytes / linearParams:F4} bytes/param), other weights {otherBytes / 1048576.0:F1} MiB");

            var lora = LoraModel.Inject(model, new LoraOptions { Rank = c.Rank, Alpha = c.Alpha, Dropout = c.Dropout, ComputeDtype = m.ComputeDtype() }, c.Seed);
            long loraBytes = lora.Parameters().Sum(p => p.Parameter.numel() * p.Parameter.element_size());
            if (m.PagedOptimizer())
            {
                spill = Path.Combine(Path.GetTempPath(), $"qlora-bench-pager-{Environment.ProcessId}");
                Directory.CreateDirectory(spill);
            }
            // Paged AdamW as the paper uses it: the states live in the pager and would page out under memory
            // pressure; with no budget set (unlimited) they stay resident, as they do on a GPU with room.
            using var opt = new PagedAdamW(lora.Parameters(), new PagedAdamWOptions
            {
                MaxGradNorm = 0.3f,
                PagerBudgetBytes = m.PagedOptimizer() ? long.MaxValue : null,
                SpillDirectory = spill,
            }, ctx);

            // The same data for every configuration: seeded token ids (data do not change dense compute), every position trained.
            var rng = new Random(c.Seed * 7919 + 17);
            var idValues = new long[c.Batch * c.SeqLen];
            for (int i = 0; i < idValues.Length; i++) idValues[i] = rng.Next(3, config.VocabSize);
            using var batch = new Batch(tensor(idValues, [c.Batch, c.SeqLen]), tensor(idValues, [c.Batch, c.SeqLen]), c.Batch * c.SeqLen, c.Batch * (c.SeqLen - 1L));
            model.train();

            StepStats Step()
            {
                // Tensors of earlier work that only the finalizer frees would otherwise be freed during the step and
                // make the heap delta below too small (negative for small models); collect them first, untimed.
                GC.Collect();
                GC.WaitForPendingFinalizers();
                var cpu0 = Environment.CpuUsage.TotalTime;
                long t0 = Stopwatch.GetTimestamp();
                opt.ZeroGrad();
                long held;
                double loss;
                long t1, t2;
                using (var scope = NewDisposeScope())
                {
                    long heap0 = MemoryProbe.HeapInUse();
                    var nll = Trainer.SummedLoss(model, batch);                     // forward
                    var mean = nll / batch.TrainTokens;
                    held = MemoryProbe.HeapInUse() - heap0;                        // what the graph keeps for backward
                    t1 = Stopwatch.GetTimestamp();
                    mean.backward();                                               // backward
                    t2 = Stopwatch.GetTimestamp();
                    loss = mean.item<float>();
                }
                opt.Step();                                                        // optimizer
                long t3 = Stopwatch.GetTimestamp();
                var cpu = (Environment.CpuUsage.TotalTime - cpu0).TotalSeconds;
                double S(long a, long b) => (b - a) / (double)Stopwatch.Frequency;
                return new StepStats(S(t0, t3), cpu, S(t0, t1), S(t1, t2), S(t2, t3), held, loss);
            }

            // Gradient checkpointing first (its peak then cannot include memory the plain steps left in the heap).
            long ckptPeak = -1, ckptHeld = -1;
            double ckptSeconds = -1;
            if (c.CheckpointSteps > 0)
            {
                MemoryProbe.ResetPeak();
                GradientCheckpointing.Enable(model, true);
                StepStats last = default;
                for (int i = 0; i < c.CheckpointSteps; i++)
                {
                    last = Step();
                    log?.Invoke($"{c}: checkpointed step {i + 1}/{c.CheckpointSteps}: {last.Seconds:F2} s, graph holds {last.HeldBytes / 1048576.0:F0} MiB");
                }
                GradientCheckpointing.Enable(model, false);
                ckptPeak = MemoryProbe.PeakResident();
                ckptHeld = last.HeldBytes;
                ckptSeconds = last.Seconds;
            }

            MemoryProbe.ResetPeak();
            for (int i = 0; i < c.Warmup; i++)
            {
                var w = Step();
                log?.Invoke($"{c}: warmup step {i + 1}/{c.Warmup}: {w.Seconds:F2} s");
            }
            var timed = new List<StepStats>();
            for (int i = 0; i < c.Steps; i++)
            {
                var s = Step();
                timed.Add(s);
                log?.Invoke($"{c}: step {i + 1}/{c.Steps}: {s.Seconds:F2} s (forward {s.Forward:F2}, backward {s.Backward:F2}, optimizer {s.Optimizer:F3}), " +
                            $"cpu {s.Cpu:F2} s, graph holds {s.HeldBytes / 1048576.0:F0} MiB, loss {s.Loss:F4}");
            }
            long trainPeak = MemoryProbe.PeakResident();
            long gradBytes = lora.Parameters().Sum(p => p.Parameter.grad is { } g ? g.numel() * g.element_size() : 0);
            var info = opt.Info;
            QLoraContextStats stats;
            unsafe
            {
                using var l = ctx.Handle.Lease();
                NativeMethods.qlora_context_get_stats(l.Value, &stats);
            }
            return new TrainCaseResult
            {
                Case = c,
                Parameters = parameters,
                LinearParameters = linearParams,
                LinearWeightBytes = linearBytes,
                OtherWeightBytes = otherBytes,
                LoraParameters = lora.TrainableParameterCount,
                LoraBytes = loraBytes,
                GradientBytes = gradBytes,
                OptimizerStateBytes = info.StateBytes,
                OptimizerPaged = info.Paged != 0,
                ActivationBytes = (long)TrainCaseResult.Median(timed.Select(t => (double)t.HeldBytes).ToList()),
                CheckpointActivationBytes = ckptHeld,
                RuntimeResidentBytes = runtimeRss,
                BuildPeakBytes = buildPeak,
                TrainPeakBytes = trainPeak,
                CheckpointPeakBytes = ckptPeak,
                NativeScratchPeakBytes = stats.ScratchPeakBytes,
                StepSeconds = timed.Select(t => t.Seconds).ToList(),
                CpuSeconds = timed.Select(t => t.Cpu).ToList(),
                Phases = (TrainCaseResult.Median(timed.Select(t => t.Forward).ToList()), TrainCaseResult.Median(timed.Select(t => t.Backward).ToList()),
                          TrainCaseResult.Median(timed.Select(t => t.Optimizer).ToList())),
                CheckpointStepSeconds = ckptSeconds,
                Loss = timed[^1].Loss,
                BuildSeconds = buildSeconds,
                LoadAverage = $"{load0} -> {MachineInfo.LoadAverageNow()}",
            };
        }
        finally
        {
            if (loaded is not null) loaded.Dispose();
            else model.Dispose();
            if (spill is not null && Directory.Exists(spill)) Directory.Delete(spill, true);
        }
    }

    private readonly record struct StepStats(double Seconds, double Cpu, double Forward, double Backward, double Optimizer, long HeldBytes, double Loss);

    // ------------------------------------------------------------------ the suite (parent side)

    /// <summary>
    /// The configurations of the suite: every model x sequence length x method (the default model only at its context
    /// length, 256), with steps scaled down as models grow so the suite takes minutes on two cores.
    /// </summary>
    public static List<TrainCase> Plan(TrainSuiteOptions o)
    {
        var cases = new List<TrainCase>();
        foreach (string key in o.Models)
        {
            var bm = SyntheticModels.Find(key);
            int maxSeq = bm.Config?.MaxPositions ?? 256;
            var (warmup, steps, ckpt) = o.StepsFor(bm);
            // --quick: the 1B model only at the shortest sequence length (its steps dominate the suite's time).
            var seqs = o.SeqLens.Where(s => s <= maxSeq).ToList();
            if (o.Quick && bm.Key == "1b" && seqs.Count > 1) seqs = [seqs.Min()];
            foreach (int seq in seqs)
                foreach (var m in o.Methods)
                    cases.Add(new TrainCase
                    {
                        Model = bm.Key, Method = m, SeqLen = seq, Batch = o.Batch, Warmup = warmup, Steps = steps,
                        CheckpointSteps = ckpt, Rank = o.Rank, Alpha = o.Alpha, Dropout = o.Dropout, Seed = o.Seed,
                    }.Validate());
        }
        return cases;
    }

    /// <summary>
    /// Runs every configuration of <paramref name="o"/> in its own child process (<paramref name="childCommand"/> +
    /// the case's JSON as the last argument; the child prints <see cref="TrainCaseResult.ToJson"/> as its last stdout
    /// line) and returns the results in plan order, with the failures (a child that exits non-zero, e.g. killed for
    /// memory) as messages.
    /// </summary>
    public static (List<TrainCaseResult> Results, List<string> Failures) RunAll(TrainSuiteOptions o, string[] childCommand, Action<string>? log = null)
    {
        var results = new List<TrainCaseResult>();
        var failures = new List<string>();
        var plan = Plan(o);
        for (int i = 0; i < plan.Count; i++)
        {
            var c = plan[i];
            log?.Invoke($"[{i + 1}/{plan.Count}] {c} (load average {MachineInfo.LoadAverageNow()})");
            try
            {
                results.Add(RunChild(c, childCommand, log));
            }
            catch (InvalidOperationException e)
            {
                failures.Add($"{c}: {e.Message}");
                log?.Invoke($"{c}: FAILED: {e.Message}");
            }
        }
        return (results, failures);
    }

    /// <summary>Runs one case in a child process and parses its result.</summary>
    /// <exception cref="InvalidOperationException">The child failed (its exit code and last error line).</exception>
    public static TrainCaseResult RunChild(TrainCase c, string[] childCommand, Action<string>? log = null)
    {
        var psi = new ProcessStartInfo(childCommand[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in childCommand.Skip(1)) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(c.ToJson().ToJsonString());
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {childCommand[0]}");
        string? lastErr = null;
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lastErr = e.Data;
            log?.Invoke("  " + e.Data);
        };
        p.BeginErrorReadLine();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"child exited with code {p.ExitCode}{(p.ExitCode == 137 ? " (killed: out of memory?)" : "")}: {lastErr ?? "(no output)"}");
        string? line = output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault();
        if (line is null) throw new InvalidOperationException("child printed no result");
        return TrainCaseResult.FromJson(JsonNode.Parse(line)!.AsObject());
    }
}

/// <summary>Settings of the training suite.</summary>
public sealed record TrainSuiteOptions
{
    /// <summary>Model keys (default: all four).</summary>
    public IReadOnlyList<string> Models { get; init; } = SyntheticModels.All.Select(m => m.Key).ToList();

    /// <summary>Sequence lengths (the default model runs only those within its 256-token context).</summary>
    public IReadOnlyList<int> SeqLens { get; init; } = [256, 512];

    /// <summary>Methods compared.</summary>
    public IReadOnlyList<TrainMethod> Methods { get; init; } = TrainMethods.All;

    /// <summary>Sequences per step.</summary>
    public int Batch { get; init; } = 1;

    /// <summary>LoRA rank (the paper: 64).</summary>
    public int Rank { get; init; } = 64;

    /// <summary>LoRA alpha (the paper: 16).</summary>
    public double Alpha { get; init; } = 16;

    /// <summary>LoRA dropout (the trainer's default).</summary>
    public double Dropout { get; init; } = 0.05;

    /// <summary>Seed.</summary>
    public int Seed { get; init; } = 1;

    /// <summary>Fewer steps (one warmup, one timed, one checkpointed at every size) and the 1B model at one sequence length.</summary>
    public bool Quick { get; init; }

    /// <summary>Timed steps of every configuration (null: by model size, see <see cref="StepsFor"/>).</summary>
    public int? Steps { get; init; }

    /// <summary>
    /// (warmup, timed, checkpointed) steps for a model: 1/5/1 below 100M parameters, 0/3/1 up to 400M, 0/2/1 above
    /// (a 1B step takes a minute or more on two shared cores); --quick: 0/1/1 everywhere; <see cref="Steps"/>
    /// overrides the timed count. The checkpointed step runs first and is the warm-up of the big models: it
    /// allocates the optimizer states and touches every weight and kernel the plain steps use.
    /// </summary>
    public (int Warmup, int Steps, int Checkpoint) StepsFor(BenchModel m)
    {
        long p = m.Config is { } c ? SyntheticModels.ClosedFormParameterCount(c) : 0;
        var (w, s, k) = Quick ? (0, 1, 1) : p < 100_000_000 ? (1, 5, 1) : p < 400_000_000 ? (0, 3, 1) : (0, 2, 1);
        return (w, Steps ?? s, k);
    }
}
