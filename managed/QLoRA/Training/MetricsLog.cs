using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Training;

/// <summary>What one optimizer step measured.</summary>
/// <param name="Step">Optimizer steps completed (1 after the first).</param>
/// <param name="Loss">Mean cross-entropy per trained token over the step's micro-batches (nats).</param>
/// <param name="LearningRate">The learning rate the step used.</param>
/// <param name="GradNorm">Global L2 norm of the LoRA gradients before clipping.</param>
/// <param name="Tokens">Tokens processed (padding excluded) in the step.</param>
/// <param name="TokensPerSecond">Tokens / wall-clock seconds of the step.</param>
/// <param name="Seconds">Wall-clock seconds of the step.</param>
/// <param name="ResidentBytes">Process resident memory after the step.</param>
/// <param name="PeakResidentBytes">Process peak resident memory so far.</param>
public sealed record StepMetrics(long Step, double Loss, double LearningRate, double GradNorm, long Tokens,
                                 double TokensPerSecond, double Seconds, long ResidentBytes, long PeakResidentBytes);

/// <summary>An evaluation result.</summary>
/// <param name="Step">Optimizer steps completed when it ran (0 = before training).</param>
/// <param name="Loss">Mean cross-entropy per response token over the evaluation split.</param>
/// <param name="Tokens">Tokens that counted.</param>
public sealed record EvalMetrics(long Step, double Loss, long Tokens);

/// <summary>Process memory as the OS reports it.</summary>
public static class ProcessMemory
{
    /// <summary>(resident bytes now, peak resident bytes since the process started).</summary>
    public static (long Resident, long Peak) Read()
    {
        using var p = Process.GetCurrentProcess();
        return (p.WorkingSet64, p.PeakWorkingSet64);
    }
}

/// <summary>
/// The metrics of a run: one JSON object per line in metrics.jsonl ({"type":"train", step, loss, lr, grad_norm,
/// tokens, tokens_per_second, seconds, rss_bytes, peak_rss_bytes} or {"type":"eval", step, eval_loss, tokens}),
/// the same scalars in TensorBoard event files under tensorboard/, and the loss curve as loss.png.
/// </summary>
public sealed class MetricsLog : IDisposable
{
    private readonly StreamWriter _jsonl;
    private readonly TensorBoardWriter _tb;
    private readonly List<StepMetrics> _train = [];
    private readonly List<EvalMetrics> _eval = [];

    /// <summary>
    /// Opens the log in <paramref name="directory"/>. With <paramref name="resumeStep"/> set, earlier records
    /// up to that step are kept (and read back for the plot) and later ones (from the interrupted part) dropped.
    /// </summary>
    public MetricsLog(string directory, long? resumeStep = null)
    {
        Directory.CreateDirectory(directory);
        JsonlPath = Path.Combine(directory, "metrics.jsonl");
        PlotPath = Path.Combine(directory, "loss.png");
        var kept = new List<string>();
        if (resumeStep is { } upTo && File.Exists(JsonlPath))
        {
            foreach (string line in File.ReadAllLines(JsonlPath))
            {
                if (line.Length == 0) continue;
                JsonNode? n;
                try { n = JsonNode.Parse(line); } catch (JsonException) { continue; }   // a line cut by a kill
                if (n is null || (long?)n["step"] is not { } step || step > upTo) continue;
                kept.Add(line);
                if ((string?)n["type"] == "train")
                    _train.Add(new StepMetrics(step, (double)n["loss"]!, (double)n["lr"]!, (double)n["grad_norm"]!, (long)n["tokens"]!,
                                               (double)n["tokens_per_second"]!, (double)n["seconds"]!, (long)n["rss_bytes"]!, (long)n["peak_rss_bytes"]!));
                else if ((string?)n["type"] == "eval")
                    _eval.Add(new EvalMetrics(step, (double)n["eval_loss"]!, (long)n["tokens"]!));
            }
        }
        // The kept records go to a temporary file renamed over the log before appending: truncating the log in
        // place would lose them all to a kill between the truncation and the rewrite.
        if (resumeStep is not null && File.Exists(JsonlPath))
        {
            string tmp = JsonlPath + ".tmp-" + Environment.ProcessId;
            File.WriteAllLines(tmp, kept);
            File.Move(tmp, JsonlPath, overwrite: true);
            _jsonl = new StreamWriter(JsonlPath, append: true) { AutoFlush = true };
        }
        else
        {
            _jsonl = new StreamWriter(JsonlPath, append: false) { AutoFlush = true };
        }
        _tb = new TensorBoardWriter(Path.Combine(directory, "tensorboard"));
    }

    /// <summary>metrics.jsonl.</summary>
    public string JsonlPath { get; }

    /// <summary>loss.png.</summary>
    public string PlotPath { get; }

    /// <summary>The TensorBoard event file of this session.</summary>
    public string TensorBoardPath => _tb.Path;

    /// <summary>Training steps logged (including those kept from before a resume).</summary>
    public IReadOnlyList<StepMetrics> Train => _train;

    /// <summary>Evaluations logged.</summary>
    public IReadOnlyList<EvalMetrics> Eval => _eval;

    /// <summary>Logs a training step.</summary>
    public void Add(StepMetrics m)
    {
        _train.Add(m);
        var o = new JsonObject
        {
            ["type"] = "train", ["step"] = m.Step, ["loss"] = m.Loss, ["lr"] = m.LearningRate, ["grad_norm"] = m.GradNorm,
            ["tokens"] = m.Tokens, ["tokens_per_second"] = Math.Round(m.TokensPerSecond, 2), ["seconds"] = Math.Round(m.Seconds, 4),
            ["rss_bytes"] = m.ResidentBytes, ["peak_rss_bytes"] = m.PeakResidentBytes,
        };
        _jsonl.WriteLine(o.ToJsonString());
        _tb.AddScalars(m.Step, [("train/loss", (float)m.Loss), ("train/lr", (float)m.LearningRate), ("train/grad_norm", (float)m.GradNorm),
                                ("train/tokens_per_second", (float)m.TokensPerSecond), ("memory/rss_mib", m.ResidentBytes / 1048576f)]);
    }

    /// <summary>Logs an evaluation.</summary>
    public void Add(EvalMetrics m)
    {
        _eval.Add(m);
        var o = new JsonObject { ["type"] = "eval", ["step"] = m.Step, ["eval_loss"] = m.Loss, ["tokens"] = m.Tokens };
        _jsonl.WriteLine(o.ToJsonString());
        _tb.AddScalars(m.Step, [("eval/loss", (float)m.Loss)]);
    }

    /// <summary>Draws the training loss (and the evaluation loss, when there is one) against the step into loss.png.</summary>
    public void SavePlot(string title)
    {
        if (_train.Count == 0) return;
        var plot = new ScottPlot.Plot();
        var train = plot.Add.Scatter(_train.Select(m => (double)m.Step).ToArray(), _train.Select(m => m.Loss).ToArray());
        train.LegendText = "train loss";
        train.MarkerSize = _train.Count > 60 ? 0 : 4;
        if (_eval.Count > 0)
        {
            var eval = plot.Add.Scatter(_eval.Select(m => (double)m.Step).ToArray(), _eval.Select(m => m.Loss).ToArray());
            eval.LegendText = "eval loss";
            eval.MarkerSize = 7;
        }
        plot.Title(title);
        plot.XLabel("optimizer step");
        plot.YLabel("cross-entropy (nats / token)");
        plot.ShowLegend();
        string tmp = PlotPath + ".tmp.png";
        plot.SavePng(tmp, 900, 540);
        File.Move(tmp, PlotPath, overwrite: true);
    }

    /// <summary>Closes the files.</summary>
    public void Dispose()
    {
        _jsonl.Dispose();
        _tb.Dispose();
    }
}
