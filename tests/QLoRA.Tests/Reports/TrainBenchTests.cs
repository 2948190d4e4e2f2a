using System.Text.Json.Nodes;

using QLoRA.Models;
using QLoRA.Reports;

namespace QLoRA.Tests.Reports;

/// <summary>
/// The training benchmark's machinery on the tiny synthetic model, in this process: every method runs a few real
/// steps, and the sizes it reports are checked against closed forms computed here from the shapes (NF4 + double
/// quantization storage, dense bytes, LoRA and AdamW sizes), the timings and memories for consistency, and the
/// tables and JSON for their fields.
/// </summary>
[NonParallelizable]
public class TrainBenchTests
{
    private static readonly Dictionary<TrainMethod, TrainCaseResult> s_results = [];

    private static TrainCase Case(TrainMethod m) => new()
    {
        Model = "tiny", Method = m, SeqLen = 64, Batch = 2, Warmup = 1, Steps = 3, CheckpointSteps = 1, Rank = 8, Alpha = 16, Dropout = 0.05, Seed = 3,
    };

    private static TrainCaseResult Result(TrainMethod m)
    {
        lock (s_results)
        {
            if (!s_results.TryGetValue(m, out var r)) s_results[m] = r = TrainBench.RunCase(Case(m));
            return r;
        }
    }

    private static IReadOnlyList<TrainCaseResult> All() => TrainMethods.All.Select(Result).ToList();

    private static LlamaConfig Config => SyntheticModels.Tiny.Config!;

    // (rows, cols) of every linear layer of one decoder layer: q, k, v, o, gate, up, down.
    private static IEnumerable<(long Rows, long Cols)> LinearShapes()
    {
        long d = Config.HiddenSize, kv = (long)Config.NumKvHeads * Config.HeadDim, q = (long)Config.NumHeads * Config.HeadDim, f = Config.IntermediateSize;
        for (int l = 0; l < Config.NumLayers; l++)
        {
            yield return (q, d);
            yield return (kv, d);
            yield return (kv, d);
            yield return (d, q);
            yield return (f, d);
            yield return (f, d);
            yield return (d, f);
        }
    }

    // NF4 + double quantization (block 64, nested block 256), as FORMATS.md lays it out: packed 4-bit codes, one
    // 8-bit code per block, one fp32 absmax per 256 blocks, one fp32 offset.
    private static long Nf4DqBytes(long rows, long cols)
    {
        long n = rows * cols, blocks = (n + 63) / 64, nested = (blocks + 255) / 256;
        return (n + 1) / 2 + blocks + 4 * nested + 4;
    }

    [Test]
    public void SizesMatchTheClosedForms()
    {
        long linearParams = LinearShapes().Sum(s => s.Rows * s.Cols);
        long loraParams = LinearShapes().Sum(s => 8 * (s.Rows + s.Cols));
        long d = Config.HiddenSize, v = Config.VocabSize;
        long allParams = linearParams + 2 * v * d + (2L * Config.NumLayers + 1) * d;   // untied embedding and head, norms
        foreach (var r in All())
        {
            string what = r.Case.Method.Key();
            Assert.That(r.Parameters, Is.EqualTo(allParams), what);
            Assert.That(r.LinearParameters, Is.EqualTo(linearParams), what);
            Assert.That(r.LoraParameters, Is.EqualTo(loraParams), what);
            Assert.That(r.LoraBytes, Is.EqualTo(4 * loraParams), $"{what}: fp32 LoRA weights");
            Assert.That(r.GradientBytes, Is.EqualTo(4 * loraParams), $"{what}: fp32 LoRA gradients");
            if (r.OptimizerPaged)
                Assert.That(r.OptimizerStateBytes, Is.GreaterThanOrEqualTo(8 * loraParams), $"{what}: two fp32 states, whole pages");
            else
                Assert.That(r.OptimizerStateBytes, Is.EqualTo(8 * loraParams), $"{what}: two fp32 states");
            long otherElems = 2 * v * d + (2L * Config.NumLayers + 1) * d;
            Assert.That(r.OtherWeightBytes, Is.EqualTo(otherElems * (r.Case.Method == TrainMethod.LoraFp32 ? 4 : 2)), $"{what}: embeddings, norms, head");
        }
        Assert.That(Result(TrainMethod.QLoRA).OptimizerPaged, Is.True, "QLoRA uses the paged optimizer");
        Assert.That(Result(TrainMethod.LoraBf16).OptimizerPaged, Is.False);
        Assert.That(Result(TrainMethod.LoraFp32).LinearWeightBytes, Is.EqualTo(4 * linearParams));
        Assert.That(Result(TrainMethod.LoraBf16).LinearWeightBytes, Is.EqualTo(2 * linearParams));
    }

    [Test]
    public void Nf4DoubleQuantBaseIsAbout0516BytesPerParameter()
    {
        var q = Result(TrainMethod.QLoRA);
        Assert.That(q.LinearWeightBytes, Is.EqualTo(LinearShapes().Sum(s => Nf4DqBytes(s.Rows, s.Cols))), "native storage_bytes vs the layout");
        // 4 bits + 8 bits per 64 + 32 bits per 64*256 = 4.127 bits; the per-tensor fp32 offset is the overhead.
        double expected = (4 + 8.0 / 64 + 32.0 / (64 * 256)) / 8;
        Assert.That(q.LinearBytesPerParameter, Is.EqualTo(expected).Within(0.01).Percent);
        Assert.That(Math.Abs(q.LinearBytesPerParameter / TrainReport.BytesPerParamTarget - 1), Is.LessThanOrEqualTo(TrainReport.BytesPerParamTolerance));
        var target = TrainReport.Targets(All()).Single(t => t.Target.Contains("bytes/param"));
        Assert.That(target.Met, Is.True, target.Measured);
    }

    [Test]
    public void TimesAndMemoriesArePositiveAndConsistent()
    {
        foreach (var r in All())
        {
            string what = r.Case.Method.Key();
            Assert.That(r.StepSeconds, Has.Count.EqualTo(3), what);
            Assert.That(r.StepSeconds, Has.All.GreaterThan(0.0), what);
            Assert.That(r.CpuSeconds, Has.All.GreaterThanOrEqualTo(0.0), what);
            Assert.That(r.TokensPerSecond, Is.EqualTo(128 / r.MedianStepSeconds).Within(1e-9).Percent, what);
            Assert.That(r.Phases.Forward + r.Phases.Backward + r.Phases.Optimizer, Is.GreaterThan(0.0).And.LessThanOrEqualTo(r.StepSeconds.Sum()), what);
            Assert.That(r.RuntimeResidentBytes, Is.GreaterThan(0), what);
            Assert.That(r.TrainPeakBytes, Is.GreaterThan(0), what);
            Assert.That(r.CheckpointPeakBytes, Is.GreaterThan(0), what);
            Assert.That(r.PeakBytes, Is.GreaterThanOrEqualTo(r.TrainPeakBytes), what);
            Assert.That(r.ActivationBytes, Is.GreaterThan(0), $"{what}: the graph holds activations");
            Assert.That(r.CheckpointActivationBytes, Is.GreaterThan(0).And.LessThan(r.ActivationBytes), $"{what}: checkpointing holds less");
            Assert.That(r.CheckpointStepSeconds, Is.GreaterThan(0.0), what);
            // Random N(0, 0.02^2) weights give near-uniform next-token distributions: the loss is about ln(vocab).
            Assert.That(r.Loss, Is.EqualTo(Math.Log(Config.VocabSize)).Within(0.3), $"{what}: loss");
            Assert.That(r.AccountedBytes(false), Is.GreaterThan(r.RuntimeResidentBytes), what);
        }
        // Activations in bf16 take about half the fp32 bytes.
        double actRatio = (double)Result(TrainMethod.LoraBf16).ActivationBytes / Result(TrainMethod.LoraFp32).ActivationBytes;
        Assert.That(actRatio, Is.InRange(0.35, 0.8));
    }

    [Test]
    public void ResultJsonRoundTrips()
    {
        var r = Result(TrainMethod.QLoRA);
        var back = TrainCaseResult.FromJson(JsonNode.Parse(r.ToJson().ToJsonString())!.AsObject());
        Assert.That(back.Case, Is.EqualTo(r.Case));
        Assert.That(back.ToJson().ToJsonString(), Is.EqualTo(r.ToJson().ToJsonString()));
        var c = TrainCase.FromJson(JsonNode.Parse(Case(TrainMethod.LoraFp32).ToJson().ToJsonString())!.AsObject());
        Assert.That(c, Is.EqualTo(Case(TrainMethod.LoraFp32)));
        Assert.Throws<ArgumentException>(() => TrainCase.FromJson(new JsonObject { ["model"] = "tiny", ["seq_len"] = 8 }));
        Assert.Throws<ArgumentException>(() => TrainCase.FromJson(new JsonObject { ["model"] = "7b", ["method"] = "qlora", ["seq_len"] = 8 }));
    }

    [Test]
    public void ReportHasEveryTableAndResultField()
    {
        var rs = All();
        string md = TrainReport.Markdown(rs, ["tiny seq 9999 x1 qlora: child exited with code 137"]);
        foreach (string heading in new[] { "### Training step", "### Memory breakdown", "### How cost grows", "### Targets" })
            Assert.That(md, Does.Contain(heading));
        foreach (var m in TrainMethods.All) Assert.That(md, Does.Contain($"| tiny | 64 | {m.Label()} |"));
        Assert.That(md, Does.Contain("FAILED: tiny seq 9999"));
        Assert.That(md, Does.Contain("not measured"), "the 1B memory target is not measured on the tiny model");

        var results = TrainReport.Results(rs);
        Assert.That(results, Is.Not.Empty);
        foreach (var x in results)
        {
            Assert.That(double.IsFinite(x.Value) && x.Value >= 0, $"{x.Name} = {x.Value}");
            var j = x.ToJson();
            foreach (string key in new[] { "name", "value", "unit", "baseline", "ratio" }) Assert.That(j.ContainsKey(key), $"{x.Name}: {key}");
            if (x.Baseline is { } b && b != 0) Assert.That(x.Ratio, Is.EqualTo(x.Value / b).Within(1e-12));
        }
        var q = rs.Single(r => r.Case.Method == TrainMethod.QLoRA);
        var tps = results.Single(x => x.Name == "train tiny seq 64x2 qlora: tokens/s");
        Assert.That(tps.Value, Is.EqualTo(q.TokensPerSecond));
        Assert.That(tps.Baseline, Is.EqualTo(Result(TrainMethod.LoraBf16).TokensPerSecond));
        var peak = results.Single(x => x.Name == "train tiny seq 64x2 qlora: peak RSS");
        Assert.That(peak.Baseline, Is.EqualTo(Result(TrainMethod.LoraFp32).PeakBytes / 1048576.0));

        var targets = TrainReport.Targets(rs);
        Assert.That(targets, Has.Count.EqualTo(4));
        Assert.That(targets[0].Met, Is.Not.Null, "step-time target evaluated");
        Assert.That(targets[2].Met, Is.Null, "no 1B case (with gradient checkpointing)");
        Assert.That(targets[3].Met, Is.Null, "no 1B case (without)");
    }

    [Test]
    public void PlanCoversModelsSequencesAndMethods()
    {
        var full = TrainBench.Plan(new TrainSuiteOptions());
        // stories15M only at its 256-token context; the synthetic models at 256 and 512; three methods each.
        Assert.That(full, Has.Count.EqualTo(3 * (1 + 3 * 2)));
        Assert.That(full.Where(c => c.Model == "15m").Select(c => c.SeqLen).Distinct(), Is.EqualTo(new[] { 256 }));
        Assert.That(full.Where(c => c.Model == "1b").Select(c => (c.SeqLen, c.Method)).Distinct().Count(), Is.EqualTo(6));
        var quick = TrainBench.Plan(new TrainSuiteOptions { Quick = true });
        Assert.That(quick.Count, Is.LessThan(full.Count));
        Assert.That(quick, Has.All.Matches<TrainCase>(c => c.Steps >= 1 && c.Warmup >= 0));
        Assert.Throws<ArgumentException>(() => TrainBench.Plan(new TrainSuiteOptions { Models = ["2b"] }));
    }
}
