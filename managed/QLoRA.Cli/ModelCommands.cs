using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

using QLoRA.Evaluation;
using QLoRA.Generation;
using QLoRA.IO;
using QLoRA.Models;
using QLoRA.Native;
using QLoRA.Reports;
using QLoRA.Tokenization;

using TorchSharp;

namespace QLoRA.Cli;

/// <summary>The inference commands of CLI.md: quantize, eval, generate, inspect (bench: <see cref="BenchCommands"/>).</summary>
internal static class ModelCommands
{
    public static void Add(RootCommand root, Option<bool> json, Option<bool> verbose)
    {
        root.Add(Quantize(json, verbose));
        root.Add(Eval(json, verbose));
        root.Add(Generate(json, verbose));
        root.Add(Inspect(json, verbose));
        var probe = new Command("load-probe", "(internal) load a model directory with NF4 and print peak memory as JSON") { Hidden = true };
        var probeDir = new Argument<string>("dir");
        probe.Add(probeDir);
        probe.SetAction(r => global::Cli.Run(r, verbose, () =>
        {
            Print(ModelsReport.RunLoadProbe(r.GetValue(probeDir)!));
            return 0;
        }));
        root.Add(probe);
    }

    private static Option<string> ModelOption() => new("--model")
    {
        Description = "default (stories15M, fetched with npm), a llama2.c .bin file, or a Hugging Face model directory (16-bit or bitsandbytes 4-bit)",
        DefaultValueFactory = _ => "default",
    };

    private static Option<string> DtypeOption() => new("--dtype")
    {
        Description = "compute dtype of activations and 16/32-bit weights: fp32 or bf16",
        DefaultValueFactory = _ => "fp32",
    };

    private static Option<string> TokenizerOption() => new("--tokenizer")
    {
        Description = "llama2.c models: the tokenizer.bin (default: tokenizer.bin next to the model)",
    };

    private static Option<string> AdapterOption() => new("--adapter")
    {
        Description = "a PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) to apply to the model",
    };

    // Puts a PEFT adapter on the loaded model (names and shapes checked against it first).
    private static void ApplyAdapter(LoadedModel loaded, string? dir)
    {
        if (dir is null) return;
        var lora = QLoRA.Adapters.PeftAdapter.Load(loaded.Model, dir, loaded.Model.ComputeDtype);
        Log($"adapter {dir}: r={lora.Options.Rank}, alpha={lora.Options.Alpha} on {lora.Layers.Count} layers");
    }

    private static torch.ScalarType ParseDtype(string s) => s.ToLowerInvariant() switch
    {
        "fp32" or "float32" => torch.ScalarType.Float32,
        "bf16" or "bfloat16" => torch.ScalarType.BFloat16,
        _ => throw new ArgumentException($"--dtype {s}: expected fp32 or bf16"),
    };

    private static void Log(string line) => Console.Error.WriteLine(line);

    private static readonly JsonSerializerOptions JsonOptions =
        new() { WriteIndented = false, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private static void Print(JsonObject o) => Console.WriteLine(o.ToJsonString(JsonOptions));

    private static double Round(double v, int digits = 4) => Math.Round(v, digits);

    // ------------------------------------------------------------------ quantize

    private static Command Quantize(Option<bool> json, Option<bool> verbose)
    {
        var model = ModelOption();
        var tokenizer = TokenizerOption();
        var outDir = new Option<string>("--out") { Description = "output directory (created)", Required = true };
        var quant = new Option<string>("--quant") { Description = "nf4 or fp4", DefaultValueFactory = _ => "nf4" };
        var block = new Option<int>("--blocksize") { Description = "elements per block scale (power of two, 32..4096)", DefaultValueFactory = _ => 64 };
        var dq = new Option<bool>("--double-quant") { Description = "8-bit block scales (double quantization)", DefaultValueFactory = _ => true };
        var dtype = DtypeOption();
        var cmd = new Command("quantize", "Write a bitsandbytes 4-bit Hugging Face directory (model.safetensors, config.json with quantization_config, tokenizer files)")
        {
            model, tokenizer, outDir, quant, block, dq, dtype,
        };
        cmd.SetAction(r => global::Cli.Run(r, verbose, () =>
        {
            var sw = Stopwatch.StartNew();
            string q = r.GetValue(quant)!;
            if (q is not ("nf4" or "fp4"))
                throw new ArgumentException($"--quant {q}: a bitsandbytes checkpoint is nf4 or fp4 (int4 has no bitsandbytes form; none writes nothing to quantize)");
            var spec = QuantSpec.Parse(q, r.GetValue(block), r.GetValue(dq));
            string output = Path.GetFullPath(r.GetValue(outDir)!);
            string? tok = r.GetValue(tokenizer);
            string m = r.GetValue(model)!;
            if (m == "default")
            {
                var files = DefaultAssets.FetchModel(Log);
                m = files.ModelPath;
                tok ??= files.TokenizerPath;
            }
            using var loaded = ModelLoader.Load(m, new ModelLoadOptions
            {
                Quant = spec, ComputeDtype = ParseDtype(r.GetValue(dtype)!), TokenizerPath = tok, RotateHalf = true, Log = Log,
            });
            var written = Checkpoints.WriteBitsAndBytes(loaded, output, tok);
            Log($"wrote {output}: {written.Tensors} tensors, {written.Bytes / 1048576.0:F2} MiB, {written.BitsPerParam:F3} bits/param over {written.QuantizedParams:N0} linear weights ({spec.Name})");
            if (r.GetValue(json))
                Print(new JsonObject
                {
                    ["out"] = output,
                    ["params"] = written.QuantizedParams,
                    ["bytes"] = written.Bytes,
                    ["bits_per_param"] = Round(written.BitsPerParam),
                    ["quant"] = spec.Name,
                    ["tensors"] = written.Tensors,
                    ["seconds"] = Round(sw.Elapsed.TotalSeconds, 2),
                });
            else Console.WriteLine(output);
            return 0;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ eval

    private static Command Eval(Option<bool> json, Option<bool> verbose)
    {
        var model = ModelOption();
        var tokenizer = TokenizerOption();
        var data = new Option<string>("--data") { Description = "UTF-8 text file to compute perplexity on", Required = true };
        var quant = new Option<string>("--quant") { Description = "none, nf4, fp4 or int4 (a bitsandbytes checkpoint: as stored, or none)", DefaultValueFactory = _ => "nf4" };
        var maxTokens = new Option<long?>("--max-tokens") { Description = "evaluate only the first N tokens of the text" };
        var window = new Option<int?>("--window") { Description = "tokens per forward pass (default: the model's context length)" };
        var stride = new Option<int?>("--stride") { Description = "tokens between window starts (default: half the window); each token is scored once" };
        var dtype = DtypeOption();
        var adapter = AdapterOption();
        var cmd = new Command("eval", "Perplexity of the model on a UTF-8 text file (sliding window)")
        {
            model, tokenizer, data, quant, maxTokens, window, stride, dtype, adapter,
        };
        cmd.SetAction(r => global::Cli.Run(r, verbose, () =>
        {
            string path = r.GetValue(data)!;
            if (!File.Exists(path)) throw new FileNotFoundException($"--data {path}: no such file");
            string text;
            try
            {
                text = File.ReadAllText(path, new System.Text.UTF8Encoding(false, true));
            }
            catch (System.Text.DecoderFallbackException e)
            {
                throw new InvalidDataException($"--data {path}: not valid UTF-8 ({e.Message})", e);
            }
            long? max = r.GetValue(maxTokens);
            if (max is < 2) throw new ArgumentException($"--max-tokens {max}: must be at least 2");
            var spec = QuantSpec.Parse(r.GetValue(quant)!);
            using var loaded = ModelLoader.Load(r.GetValue(model)!, new ModelLoadOptions
            {
                Quant = spec, ComputeDtype = ParseDtype(r.GetValue(dtype)!), TokenizerPath = r.GetValue(tokenizer), Log = Log,
            });
            ApplyAdapter(loaded, r.GetValue(adapter));
            int win = r.GetValue(window) ?? loaded.Model.Config.MaxPositions;
            if (win < 2 || win > loaded.Model.Config.MaxPositions)
                throw new ArgumentException($"--window {win}: must be in [2, {loaded.Model.Config.MaxPositions}] (the model's context)");
            int str = r.GetValue(stride) ?? Math.Max(1, win / 2);
            var result = Perplexity.OfText(loaded.Model, loaded.RequireTokenizer(), text, win, str, max, Log);
            if (r.GetValue(json))
                Print(new JsonObject
                {
                    ["perplexity"] = Round(result.Perplexity, 6),
                    ["tokens"] = result.Tokens,
                    ["quant"] = loaded.Quant.Name,
                    ["mean_nll"] = Round(result.MeanNll, 6),
                    ["window"] = win,
                    ["stride"] = str,
                    ["windows"] = result.Windows,
                    ["seconds"] = Round(result.Seconds, 2),
                    ["tokens_per_second"] = Round(result.TokensPerSecond, 1),
                });
            else
                Console.WriteLine($"perplexity {result.Perplexity:F4} over {result.Tokens} tokens ({loaded.Quant.Name}, window {win}, stride {str}, {result.Seconds:F1} s)");
            return 0;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ generate

    private static Command Generate(Option<bool> json, Option<bool> verbose)
    {
        var model = ModelOption();
        var tokenizer = TokenizerOption();
        var prompt = new Option<string>("--prompt") { Description = "the prompt text", Required = true };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "tokens to generate at most", DefaultValueFactory = _ => 128 };
        var temperature = new Option<double>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 0.8 };
        var topP = new Option<double>("--top-p") { Description = "nucleus sampling mass (1 = off)", DefaultValueFactory = _ => 0.95 };
        var topK = new Option<int>("--top-k") { Description = "keep the k most likely tokens (0 = off)", DefaultValueFactory = _ => 0 };
        var seed = new Option<ulong>("--seed") { Description = "sampling seed", DefaultValueFactory = _ => 42UL };
        var quant = new Option<string>("--quant") { Description = "none, nf4, fp4 or int4", DefaultValueFactory = _ => "nf4" };
        var chat = new Option<bool>("--chat") { Description = "format the prompt as an instruction with the model's chat template" };
        var template = new Option<string?>("--template") { Description = "chat template to use with --chat: alpaca, llama2, llama3 or chatml (default: the model's)" };
        var dtype = DtypeOption();
        var adapter = AdapterOption();
        var cmd = new Command("generate", "Generate text (streams tokens; --temperature 0 is greedy)")
        {
            model, tokenizer, prompt, maxNew, temperature, topP, topK, seed, quant, chat, template, dtype, adapter,
        };
        cmd.SetAction(r => global::Cli.Run(r, verbose, () =>
        {
            bool asJson = r.GetValue(json);
            var opts = new SamplingOptions
            {
                MaxNewTokens = r.GetValue(maxNew), Temperature = r.GetValue(temperature), TopP = r.GetValue(topP), TopK = r.GetValue(topK), Seed = r.GetValue(seed),
            }.Validate();
            using var loaded = ModelLoader.Load(r.GetValue(model)!, new ModelLoadOptions
            {
                Quant = QuantSpec.Parse(r.GetValue(quant)!), ComputeDtype = ParseDtype(r.GetValue(dtype)!), TokenizerPath = r.GetValue(tokenizer), Log = Log,
            });
            ApplyAdapter(loaded, r.GetValue(adapter));
            var tok = loaded.RequireTokenizer();
            string text = r.GetValue(prompt)!;
            List<int> ids;
            if (r.GetValue(chat))
            {
                var t = r.GetValue(template) is { } name ? ChatTemplate.ByName(name) : tok.ChatTemplate;
                ids = t.Encode(tok, t.FormatInstruction(text));
                Log($"chat template: {t.Name}");
            }
            else ids = tok.Encode(text);
            var output = asJson ? Console.Error : Console.Out;
            if (!r.GetValue(chat)) output.Write(text);
            var gen = new TextGenerator(loaded.Model, tok);
            var result = gen.Generate(ids, opts, t =>
            {
                if (t.IsEos) return;
                output.Write(t.Text);
                output.Flush();
            });
            output.WriteLine();
            Log($"{result.Tokens.Count} tokens, {result.TokensPerSecond:F1} tokens/s, stop: {result.StopReason}");
            if (asJson)
                Print(new JsonObject
                {
                    ["text"] = result.Text,
                    ["tokens"] = result.Tokens.Count,
                    ["tokens_per_second"] = Round(result.TokensPerSecond, 2),
                    ["prompt_tokens"] = result.PromptTokens.Count,
                    ["stop_reason"] = result.StopReason,
                    ["quant"] = loaded.Quant.Name,
                    ["seed"] = opts.Seed,
                });
            return 0;
        }));
        return cmd;
    }

    // ------------------------------------------------------------------ inspect

    private static Command Inspect(Option<bool> json, Option<bool> verbose)
    {
        var path = new Argument<string>("file-or-dir") { Description = "a .safetensors file, a model directory (config.json + safetensors), a llama2.c model.bin or tokenizer.bin" };
        var all = new Option<bool>("--all") { Description = "list every tensor (default: the first 40 in text mode)" };
        var cmd = new Command("inspect", "Tensors, dtypes, shapes, quantization and memory of a checkpoint") { path, all };
        cmd.SetAction(r => global::Cli.Run(r, verbose, () =>
        {
            var report = Inspector.Inspect(r.GetValue(path)!);
            if (r.GetValue(json)) Print(report);
            else Inspector.PrintText(report, r.GetValue(all));
            return 0;
        }));
        return cmd;
    }

    internal static string[] ProbeCommand()
    {
        string exe = Environment.ProcessPath ?? "dotnet";
        return Path.GetFileNameWithoutExtension(exe) == "dotnet"
            ? [exe, typeof(ModelCommands).Assembly.Location, "load-probe"]
            : [exe, "load-probe"];
    }

    internal static string? FindRepoRoot()
    {
        for (var d = new DirectoryInfo(Environment.CurrentDirectory); d is not null; d = d.Parent)
            if (Directory.Exists(Path.Combine(d.FullName, "tests", "QLoRA.Tests"))) return d.FullName;
        return null;
    }
}

/// <summary>Text form of the inspect report.</summary>
internal static class Inspector
{
    public static JsonObject Inspect(string path) => CheckpointInspector.Inspect(path);

    public static void PrintText(JsonObject report, bool all)
    {
        Console.WriteLine($"{report["path"]}  ({report["format"]})");
        if (report["config"] is JsonObject cfg)
            Console.WriteLine("config: " + string.Join(", ", cfg.Where(kv => kv.Value is not null && kv.Key != "quantization_config").Select(kv => $"{kv.Key} {kv.Value!.ToJsonString()}")));
        if (report["config"]?["quantization_config"] is JsonObject q)
            Console.WriteLine("quantization_config: " + q.ToJsonString());
        if (report["vocab_size"] is JsonNode v) Console.WriteLine($"vocabulary: {v} tokens");
        var tensors = report["tensors"]!.AsArray();
        int shown = 0;
        foreach (var t in tensors)
        {
            if (!all && shown == 40)
            {
                Console.WriteLine($"  ... {tensors.Count - 40} more (--all lists them)");
                break;
            }
            Console.WriteLine($"  {t!["name"],-60} {t["dtype"],-5} {t["shape"]!.ToJsonString(),-16} {t["bytes"]!.GetValue<long>() / 1048576.0,10:F3} MiB");
            shown++;
        }
        if (report["quantized"] is JsonArray qa && qa.Count > 0)
        {
            var first = qa[0]!;
            Console.WriteLine($"bitsandbytes 4-bit layers: {qa.Count} ({first["quant_type"]}, block {first["blocksize"]}, double quant {first["double_quant"]}), " +
                              $"{report["quantized_params"]} parameters, {qa.Sum(x => x!["bytes"]!.GetValue<long>()) * 8.0 / report["quantized_params"]!.GetValue<long>():F3} bits/param in the file (incl. each layer's code tables and quant state)");
        }
        if (report["params"] is JsonNode p) Console.WriteLine($"parameters: {p.GetValue<long>():N0}");
        Console.WriteLine($"bytes: {report["bytes"]!.GetValue<long>():N0} ({report["bytes"]!.GetValue<long>() / 1048576.0:F2} MiB)" +
                          (report["bytes_by_dtype"] is JsonObject bd ? "; by dtype: " + string.Join(", ", bd.Select(kv => $"{kv.Key} {kv.Value!.GetValue<long>() / 1048576.0:F2} MiB")) : ""));
    }
}
