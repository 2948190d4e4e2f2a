using System.Globalization;
using System.Text;

namespace QLoRA.Reports;

/// <summary>
/// The tables of the training suite from the measured <see cref="TrainCaseResult"/>s: the step (tokens/s, peak
/// memory, ratios), the memory breakdown, how cost grows with size and sequence length, and the targets.
/// </summary>
public static class TrainReport
{
    /// <summary>Target: QLoRA step time at most this many times LoRA on a bf16 base.</summary>
    public const double StepTimeTarget = 1.2;

    /// <summary>Target: bytes per parameter of the NF4+DQ linear weights (4.127 bits / 8).</summary>
    public const double BytesPerParamTarget = 0.516;

    /// <summary>Tolerance of <see cref="BytesPerParamTarget"/> (relative).</summary>
    public const double BytesPerParamTolerance = 0.01;

    /// <summary>Target: QLoRA peak memory at most this fraction of LoRA on an fp32 base, at 1B.</summary>
    public const double PeakMemoryTarget = 0.35;

    private static string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);

    private static string Mib(long bytes) => TrainCaseResult.Mib(bytes);

    private static TrainCaseResult? Find(IEnumerable<TrainCaseResult> rs, TrainCaseResult like, TrainMethod m) =>
        rs.FirstOrDefault(r => r.Case.Model == like.Case.Model && r.Case.SeqLen == like.Case.SeqLen && r.Case.Batch == like.Case.Batch && r.Case.Method == m);

    private static string ModelLabel(string key) => SyntheticModels.Find(key).Label;

    /// <summary>The results (CLI.md's name/value/unit/baseline/ratio) of the measured cases.</summary>
    public static List<BenchResult> Results(IReadOnlyList<TrainCaseResult> rs)
    {
        var list = new List<BenchResult>();
        foreach (var r in rs)
        {
            string id = $"train {r.Case.Model} seq {r.Case.SeqLen}x{r.Case.Batch} {r.Case.Method.Key()}";
            var bf16 = r.Case.Method == TrainMethod.LoraBf16 ? null : Find(rs, r, TrainMethod.LoraBf16);
            var fp32 = r.Case.Method == TrainMethod.LoraFp32 ? null : Find(rs, r, TrainMethod.LoraFp32);
            list.Add(new BenchResult($"{id}: tokens/s", r.TokensPerSecond, "tokens/s", bf16?.TokensPerSecond, bf16 is null ? null : "LoRA, bf16 base"));
            list.Add(new BenchResult($"{id}: step time (median)", r.MedianStepSeconds, "s", bf16?.MedianStepSeconds, bf16 is null ? null : "LoRA, bf16 base"));
            list.Add(new BenchResult($"{id}: CPU time per step (median)", r.MedianCpuSeconds, "s", bf16?.MedianCpuSeconds, bf16 is null ? null : "LoRA, bf16 base"));
            list.Add(new BenchResult($"{id}: peak RSS", r.PeakBytes / 1048576.0, "MiB", fp32 is null ? null : fp32.PeakBytes / 1048576.0, fp32 is null ? null : "LoRA, fp32 base"));
            if (r.CheckpointPeakBytes > 0)
                list.Add(new BenchResult($"{id}: peak RSS with gradient checkpointing", r.CheckpointPeakBytes / 1048576.0, "MiB",
                    fp32 is { CheckpointPeakBytes: > 0 } ? fp32.CheckpointPeakBytes / 1048576.0 : null, fp32 is null ? null : "LoRA, fp32 base"));
            list.Add(new BenchResult($"{id}: linear weights", r.LinearBytesPerParameter, "bytes/param", fp32?.LinearBytesPerParameter, fp32 is null ? null : "LoRA, fp32 base"));
            list.Add(new BenchResult($"{id}: all weights", r.ModelBytesPerParameter, "bytes/param", fp32?.ModelBytesPerParameter, fp32 is null ? null : "LoRA, fp32 base"));
            foreach (var (part, bytes, fbytes) in new (string, long, long?)[]
            {
                ("memory: base linear weights", r.LinearWeightBytes, fp32?.LinearWeightBytes),
                ("memory: embeddings, norms, head", r.OtherWeightBytes, fp32?.OtherWeightBytes),
                ("memory: LoRA parameters", r.LoraBytes, fp32?.LoraBytes),
                ("memory: LoRA gradients", r.GradientBytes, fp32?.GradientBytes),
                ("memory: optimizer states", r.OptimizerStateBytes, fp32?.OptimizerStateBytes),
                ("memory: activations", r.ActivationBytes, fp32?.ActivationBytes),
                ("memory: activations with gradient checkpointing", r.CheckpointActivationBytes, fp32?.CheckpointActivationBytes),
            })
                if (bytes >= 0)
                    list.Add(new BenchResult($"{id}: {part}", bytes / 1048576.0, "MiB", fbytes is >= 0 ? fbytes / 1048576.0 : null, fp32 is null ? null : "LoRA, fp32 base"));
        }
        return list;
    }

    /// <summary>The markdown of the training suite.</summary>
    /// <param name="rs">Measured cases.</param>
    /// <param name="failures">Cases that failed (printed as such).</param>
    /// <param name="plotPath">Where the scaling plot was written (mentioned), or null.</param>
    public static string Markdown(IReadOnlyList<TrainCaseResult> rs, IReadOnlyList<string> failures, string? plotPath = null)
    {
        var md = new StringBuilder();
        if (rs.Count == 0)
        {
            md.AppendLine("No training configuration completed.");
            foreach (string f in failures) md.AppendLine($"- FAILED {f}");
            return md.ToString();
        }
        var first = rs[0].Case;
        md.AppendLine("### Training step: QLoRA vs LoRA on 16/32-bit bases");
        md.AppendLine();
        md.AppendLine($"Forward + backward + AdamW step, batch {first.Batch}, LoRA r={first.Rank}, alpha={F(first.Alpha, "0.##")}, dropout {F(first.Dropout, "0.##")} on every linear layer " +
                      "(q, k, v, o, gate, up, down); the same seeded token ids for every configuration, loss on every position. " +
                      "QLoRA: NF4 + double quantization (block 64), bf16 activations, paged AdamW (32-bit states in the native pager, no budget). " +
                      "LoRA: dense bf16 or fp32 base, AdamW (32-bit states), activations in the base's dtype. " +
                      "The 125M/350M/1.1B models have random weights: right for time and memory, never for quality. " +
                      "Each configuration runs in a child process of its own: first a step with gradient checkpointing (it also warms up: " +
                      "optimizer states allocated, every weight and kernel touched), then the untimed warm-up steps (if any) and the timed steps " +
                      "without checkpointing; time = median of the timed steps (n in the table). The synthetic models' layers are copies of one " +
                      "random matrix per role (q, k, v, o, gate, up, down), each layer its own copy.");
        md.AppendLine();
        md.AppendLine("| model | params | seq | method | tokens/s | step s (median) | CPU s / step | fwd / bwd / optim s | peak RSS MiB | step time vs LoRA-bf16 | peak RSS vs LoRA-fp32 |");
        md.AppendLine("|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|");
        foreach (var r in rs)
        {
            var bf16 = Find(rs, r, TrainMethod.LoraBf16);
            var fp32 = Find(rs, r, TrainMethod.LoraFp32);
            string tr = bf16 is null ? "-" : F(r.MedianStepSeconds / bf16.MedianStepSeconds, "0.00") + "x";
            string mr = fp32 is null ? "-" : F((double)r.PeakBytes / fp32.PeakBytes, "0.00") + "x";
            md.AppendLine($"| {r.Case.Model} | {F(r.Parameters / 1e6, "0.0")}M | {r.Case.SeqLen} | {r.Case.Method.Label()} | {F(r.TokensPerSecond, "0.0")} | " +
                          $"{F(r.MedianStepSeconds, "0.000")} (n={r.StepSeconds.Count}) | {F(r.MedianCpuSeconds, "0.00")} | " +
                          $"{F(r.Phases.Forward, "0.00")} / {F(r.Phases.Backward, "0.00")} / {F(r.Phases.Optimizer, "0.000")} | {Mib(r.PeakBytes)} | {tr} | {mr} |");
        }
        foreach (string f in failures) md.AppendLine($"| FAILED: {f} |||||||||||");
        md.AppendLine();

        md.AppendLine("### Memory breakdown (MiB, from the allocations)");
        md.AppendLine();
        md.AppendLine("Base weights: Q4 `storage_bytes` (packed codes + 8-bit scales + nested scales) or the dense tensors' bytes; LoRA and gradients: " +
                      "tensor sizes; optimizer: the native AdamW's `state_bytes`; activations: C heap held by the autograd graph after the forward pass " +
                      "(glibc `mallinfo2`), without and with gradient checkpointing; runtime: RSS of the process before the model existed (.NET, libtorch, " +
                      "native core). Peak RSS: VmHWM of the child over the plain steps (and, reset in between, over the checkpointed ones).");
        md.AppendLine();
        md.AppendLine("| model | seq | method | base linear | bytes/param (linear) | embed + norms + head | bytes/param (all weights) | LoRA | LoRA grads | optimizer | activations | activations (ckpt) | runtime | sum of parts | peak RSS | peak RSS (ckpt) |");
        md.AppendLine("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rs)
            md.AppendLine($"| {r.Case.Model} | {r.Case.SeqLen} | {r.Case.Method.Label()} | {Mib(r.LinearWeightBytes)} | {F(r.LinearBytesPerParameter, "0.0000")} | {Mib(r.OtherWeightBytes)} | " +
                          $"{F(r.ModelBytesPerParameter, "0.000")} | {Mib(r.LoraBytes)} | {Mib(r.GradientBytes)} | {Mib(r.OptimizerStateBytes)} | {Mib(r.ActivationBytes)} | " +
                          $"{Mib(r.CheckpointActivationBytes)} | {Mib(r.RuntimeResidentBytes)} | {Mib(r.AccountedBytes(false))} | {Mib(r.PeakBytes)} | {Mib(r.CheckpointPeakBytes)} |");
        md.AppendLine();

        md.AppendLine("### How cost grows: milliseconds per token");
        md.AppendLine();
        var seqs = rs.Select(r => r.Case.SeqLen).Distinct().Order().ToList();
        var methods = TrainMethods.All.Where(m => rs.Any(r => r.Case.Method == m)).ToList();
        md.AppendLine("| model | params | " + string.Join(" | ", methods.SelectMany(m => seqs.Select(s => $"{m.Label()} seq {s}"))) + " |");
        md.AppendLine("|---|---:|" + string.Concat(methods.SelectMany(_ => seqs.Select(_ => "---:|"))));
        foreach (var model in rs.Select(r => r.Case.Model).Distinct())
        {
            var row = rs.First(r => r.Case.Model == model);
            var cells = methods.SelectMany(m => seqs.Select(s =>
                rs.FirstOrDefault(r => r.Case.Model == model && r.Case.Method == m && r.Case.SeqLen == s) is { } x
                    ? F(x.MedianStepSeconds * 1000 / x.TokensPerStep, "0.00")
                    : "-"));
            md.AppendLine($"| {ModelLabel(model)} | {F(row.Parameters / 1e6, "0.0")}M | {string.Join(" | ", cells)} |");
        }
        md.AppendLine();
        md.AppendLine("Median step time divided by the tokens of a step (batch x sequence length).");
        if (plotPath is not null) md.AppendLine($"Plot: `{plotPath}`.");
        md.AppendLine();

        md.AppendLine("### Targets");
        md.AppendLine();
        md.AppendLine("| target | measured | met |");
        md.AppendLine("|---|---|---|");
        foreach (var line in Targets(rs)) md.AppendLine($"| {line.Target} | {line.Measured} | {(line.Met is { } met ? met ? "yes" : "**no**" : "not measured")} |");
        return md.ToString();
    }

    /// <summary>One row of the targets table.</summary>
    /// <param name="Target">What is asked.</param>
    /// <param name="Measured">What was measured.</param>
    /// <param name="Met">Whether it was met (null: not measured in this run).</param>
    public sealed record TargetLine(string Target, string Measured, bool? Met);

    /// <summary>The three targets of the benchmark issue, evaluated on <paramref name="rs"/>.</summary>
    public static List<TargetLine> Targets(IReadOnlyList<TrainCaseResult> rs)
    {
        var lines = new List<TargetLine>();
        var step = rs.Where(r => r.Case.Method == TrainMethod.QLoRA)
            .Select(r => (r, b: Find(rs, r, TrainMethod.LoraBf16))).Where(x => x.b is not null)
            .Select(x => (x.r.Case, Ratio: x.r.MedianStepSeconds / x.b!.MedianStepSeconds)).ToList();
        lines.Add(new TargetLine($"QLoRA step time <= {StepTimeTarget}x LoRA on a bf16 base",
            step.Count == 0 ? "-" : string.Join("; ", step.Select(s => $"{s.Case.Model} seq {s.Case.SeqLen}: {F(s.Ratio, "0.00")}x")),
            step.Count == 0 ? null : step.All(s => s.Ratio <= StepTimeTarget)));
        var q = rs.Where(r => r.Case.Method == TrainMethod.QLoRA).ToList();
        lines.Add(new TargetLine($"NF4+DQ base weights {BytesPerParamTarget} bytes/param (+-{BytesPerParamTolerance:P0})",
            q.Count == 0 ? "-" : string.Join("; ", q.GroupBy(r => r.Case.Model).Select(g => g.First())
                .Select(r => $"{r.Case.Model}: {F(r.LinearBytesPerParameter, "0.0000")} linear ({F(r.ModelBytesPerParameter, "0.000")} with the bf16 embeddings, norms, head)")),
            q.Count == 0 ? null : q.All(r => Math.Abs(r.LinearBytesPerParameter / BytesPerParamTarget - 1) <= BytesPerParamTolerance)));
        var big = rs.Where(r => r.Case.Method == TrainMethod.QLoRA && r.Case.Model == "1b")
            .Select(r => (r, f: Find(rs, r, TrainMethod.LoraFp32))).Where(x => x.f is not null)
            .Select(x => (x.r.Case, Ratio: (double)x.r.PeakBytes / x.f!.PeakBytes,
                          Ckpt: x.r.CheckpointPeakBytes > 0 && x.f!.CheckpointPeakBytes > 0 ? (double)x.r.CheckpointPeakBytes / x.f.CheckpointPeakBytes : double.NaN)).ToList();
        // Judged in the QLoRA paper's training setting, gradient checkpointing on both sides (its paged optimizers
        // exist for the spikes of checkpointed backward passes); the plain steps are judged on a line of their own.
        var ckpt = big.Where(b => !double.IsNaN(b.Ckpt)).ToList();
        lines.Add(new TargetLine($"QLoRA peak memory <= {PeakMemoryTarget}x LoRA on an fp32 base at 1B, gradient checkpointing on both (the paper's setting)",
            ckpt.Count == 0 ? "-" : string.Join("; ", ckpt.Select(b => $"seq {b.Case.SeqLen}: {F(b.Ckpt, "0.00")}x")),
            ckpt.Count == 0 ? null : ckpt.All(b => b.Ckpt <= PeakMemoryTarget)));
        lines.Add(new TargetLine($"QLoRA peak memory <= {PeakMemoryTarget}x LoRA on an fp32 base at 1B, without gradient checkpointing",
            big.Count == 0 ? "-" : string.Join("; ", big.Select(b => $"seq {b.Case.SeqLen}: {F(b.Ratio, "0.00")}x")),
            big.Count == 0 ? null : big.All(b => b.Ratio <= PeakMemoryTarget)));
        return lines;
    }

    /// <summary>
    /// Draws milliseconds per token against parameters (log-scaled x), one line per method and sequence length, into
    /// <paramref name="path"/> (PNG).
    /// </summary>
    public static void SavePlot(IReadOnlyList<TrainCaseResult> rs, string path)
    {
        var plot = new ScottPlot.Plot();
        foreach (var m in TrainMethods.All)
            foreach (int seq in rs.Select(r => r.Case.SeqLen).Distinct().Order())
            {
                var pts = rs.Where(r => r.Case.Method == m && r.Case.SeqLen == seq).OrderBy(r => r.Parameters).ToList();
                if (pts.Count == 0) continue;
                var s = plot.Add.Scatter(pts.Select(r => Math.Log10(r.Parameters)).ToArray(), pts.Select(r => r.MedianStepSeconds * 1000 / r.TokensPerStep).ToArray());
                s.LegendText = $"{m.Label()}, seq {seq}";
                s.MarkerSize = 7;
            }
        plot.Title("Training step: milliseconds per token vs model size");
        plot.XLabel("parameters (log10)");
        plot.YLabel("ms per token");
        plot.ShowLegend();
        string? dir = Path.GetDirectoryName(Path.GetFullPath(path));
        if (dir is not null) Directory.CreateDirectory(dir);
        plot.SavePng(path, 900, 560);
    }
}
