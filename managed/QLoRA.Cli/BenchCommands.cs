using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

using QLoRA.Models;
using QLoRA.Reports;

namespace QLoRA.Cli;

/// <summary>
/// <c>qlora bench [--suite kernels|train|models|all]</c>: the benchmark report (CLI.md: a markdown table, or with
/// <c>--json</c> one object whose <c>results</c> array holds name, value, unit, baseline, ratio), headed by the
/// machine's description. The training configurations run in child processes (the hidden <c>bench-train-case</c>
/// command) so that their peak memories are measured apart.
/// </summary>
internal static class BenchCommands
{
    private static readonly string[] Suites = ["kernels", "train", "models", "all"];

    public static void Add(RootCommand root, Option<bool> json, Option<bool> verbose)
    {
        root.Add(Bench(json, verbose));
        var child = new Command("bench-train-case", "(internal) run one training benchmark configuration (JSON argument) and print its measurements as JSON") { Hidden = true };
        var spec = new Argument<string>("case-json");
        child.Add(spec);
        child.SetAction(r => global::Cli.Run(r, verbose, () =>
        {
            var c = TrainCase.FromJson(JsonNode.Parse(r.GetValue(spec)!)?.AsObject() ?? throw new ArgumentException("case-json: not a JSON object"));
            var result = TrainBench.RunCase(c, Log);
            Print(result.ToJson());
            return 0;
        }));
        root.Add(child);
    }

    private static void Log(string line) => Console.Error.WriteLine(line);

    private static readonly JsonSerializerOptions JsonOptions =
        new() { WriteIndented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static void Print(JsonObject o) => Console.WriteLine(o.ToJsonString(JsonOptions));

    private static List<string> SplitList(string s) => s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).ToList();

    private static Command Bench(Option<bool> json, Option<bool> verbose)
    {
        var suite = new Option<string>("--suite") { Description = "kernels (fused 4-bit matmul vs libtorch dense), train (QLoRA vs LoRA step, memory, scaling), models (perplexity, generation, 1B load), all, or a comma-separated list", DefaultValueFactory = _ => "all" };
        var quick = new Option<bool>("--quick") { Description = "a shorter run: one timed step per configuration, fewer kernel shapes, the 1B model only at the shortest sequence, models suite on 2048 tokens without the 1B load" };
        var steps = new Option<int?>("--steps") { Description = "train: timed steps of every configuration (default: 5 below 100M parameters, 3 up to 400M, 2 above; after one step with gradient checkpointing, and, below 100M parameters, one untimed warm-up step)" };
        var models = new Option<string>("--models") { Description = "train: models to run (15m = stories15M, 125m, 350m, 1b)", DefaultValueFactory = _ => "15m,125m,350m,1b" };
        var seq = new Option<string>("--seq") { Description = "train: sequence lengths", DefaultValueFactory = _ => "256,512" };
        var methods = new Option<string>("--methods") { Description = "train: qlora, lora-bf16, lora-fp32", DefaultValueFactory = _ => "qlora,lora-bf16,lora-fp32" };
        var batch = new Option<int>("--batch-size") { Description = "train: sequences per step", DefaultValueFactory = _ => 1 };
        var rank = new Option<int>("--rank") { Description = "train: LoRA rank", DefaultValueFactory = _ => 64 };
        var alpha = new Option<double>("--alpha") { Description = "train: LoRA alpha", DefaultValueFactory = _ => 16 };
        var plot = new Option<string?>("--plot") { Description = "train: write a PNG of milliseconds per token vs model size here" };
        var output = new Option<string?>("--output") { Description = "also write the markdown report to this file" };
        var maxTokens = new Option<int?>("--max-tokens") { Description = "models: tokens of each evaluation text (default 16384; --quick 2048)" };
        var noProbe = new Option<bool>("--no-load-probe") { Description = "models: skip the synthetic 1B checkpoint (writes 2.2 GB to the temp folder)" };
        var writeFixture = new Option<bool>("--write-fixture") { Description = "models: (re)write the in-domain fixture: stories sampled from the fp32 default model, seeds 1..40" };
        var repo = new Option<string?>("--repo") { Description = "models: repository root holding the fixture (default: found from the current directory)" };
        var parts = new Option<string>("--parts") { Description = "models: comma-separated: perplexity, generation, load", DefaultValueFactory = _ => "perplexity,generation,load" };
        var cmd = new Command("bench", "Benchmark report: markdown tables with the machine's description (JSON with --json)")
        {
            suite, quick, steps, models, seq, methods, batch, rank, alpha, plot, output, maxTokens, noProbe, writeFixture, repo, parts,
        };
        cmd.SetAction(r => global::Cli.Run(r, verbose, () =>
        {
            string s = r.GetValue(suite)!;
            var run = SplitList(s).ToHashSet();
            foreach (string x in run)
                if (!Suites.Contains(x)) throw new UsageException($"--suite {s}: \"{x}\" is not one of {string.Join(", ", Suites)}");
            if (run.Count == 0) throw new UsageException("--suite: empty");
            if (run.Contains("all")) run = ["kernels", "train", "models"];
            if (r.GetValue(steps) is < 1) throw new UsageException($"--steps {r.GetValue(steps)}: at least one timed step");
            bool q = r.GetValue(quick);
            // The training options are checked before anything runs (the kernel suite takes minutes).
            TrainSuiteOptions? trainOptions = null;
            if (run.Contains("train"))
            {
                try
                {
                    trainOptions = new TrainSuiteOptions
                    {
                        Models = SplitList(r.GetValue(models)!).Select(k => SyntheticModels.Find(k).Key).ToList(),
                        SeqLens = SplitList(r.GetValue(seq)!).Select(x => int.TryParse(x, NumberStyles.None, CultureInfo.InvariantCulture, out int v) && v >= 2
                            ? v : throw new UsageException($"--seq: \"{x}\" is not a sequence length")).ToList(),
                        Methods = SplitList(r.GetValue(methods)!).Select(TrainMethods.Parse).ToList(),
                        Batch = r.GetValue(batch),
                        Rank = r.GetValue(rank),
                        Alpha = r.GetValue(alpha),
                        Quick = q,
                        Steps = r.GetValue(steps),
                    };
                    if (TrainBench.Plan(trainOptions).Count == 0)
                        throw new UsageException($"--seq {r.GetValue(seq)}: no configuration fits the models' context lengths");
                }
                catch (ArgumentException e)
                {
                    throw new UsageException(e.ParamName is null ? e.Message : e.Message.Replace($" (Parameter '{e.ParamName}')", "", StringComparison.Ordinal));
                }
            }
            var total = Stopwatch.StartNew();
            var machine = MachineInfo.Collect();
            Log(machine.ToMarkdown());
            var results = new List<BenchResult>();
            var md = new StringBuilder();
            md.AppendLine($"## `qlora {string.Join(" ", Environment.GetCommandLineArgs().Skip(1))}`");
            md.AppendLine();
            md.AppendLine(machine.ToMarkdown());
            md.AppendLine();
            var extra = new JsonObject();

            if (run.Contains("kernels"))
            {
                var (kr, kmd) = KernelBench.Run(q, Log);
                results.AddRange(kr);
                md.AppendLine(kmd);
            }
            if (trainOptions is { } plan)
            {
                var (tr, failures) = TrainBench.RunAll(plan, SelfCommand("bench-train-case"), Log);
                string? plotPath = r.GetValue(plot);
                if (plotPath is not null && tr.Count > 0) TrainReport.SavePlot(tr, plotPath);
                results.AddRange(TrainReport.Results(tr));
                md.AppendLine(TrainReport.Markdown(tr, failures, plotPath));
                extra["train_cases"] = new JsonArray(tr.Select(x => (JsonNode)x.ToJson()).ToArray());
                extra["train_failures"] = new JsonArray(failures.Select(f => (JsonNode)f).ToArray());
                extra["targets"] = new JsonArray(TrainReport.Targets(tr).Select(t => (JsonNode)new JsonObject
                {
                    ["target"] = t.Target, ["measured"] = t.Measured, ["met"] = t.Met,
                }).ToArray());
            }
            if (run.Contains("models"))
            {
                string root = r.GetValue(repo) ?? ModelCommands.FindRepoRoot() ?? throw new DirectoryNotFoundException("cannot find the repository root (a folder with tests/QLoRA.Tests); pass --repo DIR");
                if (r.GetValue(writeFixture))
                {
                    using var fp32 = ModelLoader.Load("default", new ModelLoadOptions { Quant = QuantSpec.None, Log = Log });
                    string text = ModelsReport.SampleStories(fp32, 40, 1);
                    string fixture = Path.Combine(root, ModelsReport.InDomainFixture);
                    Directory.CreateDirectory(Path.GetDirectoryName(fixture)!);
                    File.WriteAllText(fixture, text);
                    Log($"wrote {fixture} ({text.Length} characters)");
                }
                var p = SplitList(r.GetValue(parts)!).ToHashSet();
                foreach (string x in p)
                    if (x is not ("perplexity" or "generation" or "load")) throw new ArgumentException($"--parts: unknown part \"{x}\" (perplexity, generation, load)");
                string[]? probe = r.GetValue(noProbe) || q || !p.Contains("load") ? null : ModelCommands.ProbeCommand();
                var (mr, mmd) = ModelsReport.Run(root, r.GetValue(maxTokens) ?? (q ? 2048 : 16384), probe, log: Log,
                    perplexity: p.Contains("perplexity"), generation: p.Contains("generation"));
                results.AddRange(mr);
                md.AppendLine("### Models: 4-bit inference (the QLoRA paper's Table 2 on the default model)");
                md.AppendLine();
                md.AppendLine(mmd);
            }
            md.AppendLine($"Total {total.Elapsed.TotalMinutes:F1} min; load average {MachineInfo.LoadAverageNow()} at the end.");
            if (r.GetValue(output) is { } outFile)
            {
                string? dir = Path.GetDirectoryName(Path.GetFullPath(outFile));
                if (dir is not null) Directory.CreateDirectory(dir);
                File.WriteAllText(outFile, md.ToString());
            }
            if (r.GetValue(json))
            {
                var o = new JsonObject
                {
                    ["suite"] = s,
                    ["quick"] = q,
                    ["machine"] = machine.ToJson(),
                    ["results"] = new JsonArray(results.Select(x => (JsonNode)x.ToJson()).ToArray()),
                    ["seconds"] = Math.Round(total.Elapsed.TotalSeconds, 1),
                };
                foreach (var (k, v) in extra.ToList())
                {
                    extra.Remove(k);
                    o[k] = v;
                }
                Print(o);
            }
            else Console.WriteLine(md);
            return 0;
        }));
        return cmd;
    }

    /// <summary>The command line that runs this tool with <paramref name="subcommand"/> (through dotnet when run as a dll).</summary>
    private static string[] SelfCommand(string subcommand)
    {
        string exe = Environment.ProcessPath ?? "dotnet";
        return Path.GetFileNameWithoutExtension(exe) == "dotnet"
            ? [exe, typeof(BenchCommands).Assembly.Location, subcommand]
            : [exe, subcommand];
    }
}
