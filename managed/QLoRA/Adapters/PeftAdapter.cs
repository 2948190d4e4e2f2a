using System.Text.Json;
using System.Text.Json.Nodes;

using QLoRA.IO;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Native;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Adapters;

/// <summary>The fields of a PEFT adapter_config.json this library reads and writes.</summary>
/// <param name="Rank">r.</param>
/// <param name="Alpha">lora_alpha.</param>
/// <param name="Dropout">lora_dropout.</param>
/// <param name="TargetModules">target_modules.</param>
/// <param name="UseRsLora">use_rslora.</param>
/// <param name="BaseModel">base_model_name_or_path.</param>
public sealed record PeftAdapterConfig(int Rank, double Alpha, double Dropout, IReadOnlyList<string> TargetModules, bool UseRsLora, string? BaseModel)
{
    /// <summary>The LoRA options these fields describe (fp32 compute unless given).</summary>
    public LoraOptions ToOptions(ScalarType computeDtype = ScalarType.Float32) => new()
    {
        Rank = Rank, Alpha = Alpha, Dropout = Dropout, UseRsLora = UseRsLora, TargetModules = TargetModules, ComputeDtype = computeDtype,
    };
}

/// <summary>An adapter read from disk: its config and its A/B tensors by module name (in Hugging Face layout).</summary>
/// <param name="Directory">Where it was read from.</param>
/// <param name="Config">adapter_config.json.</param>
/// <param name="Weights">module name → (A [r, in], B [out, r]) as fp32 tensors.</param>
public sealed record PeftAdapterData(string Directory, PeftAdapterConfig Config, IReadOnlyDictionary<string, (Tensor A, Tensor B)> Weights) : IDisposable
{
    /// <summary>Frees the tensors.</summary>
    public void Dispose()
    {
        foreach (var (a, b) in Weights.Values)
        {
            a.Dispose();
            b.Dispose();
        }
    }
}

/// <summary>
/// PEFT LoRA adapters on disk (FORMATS.md): <c>adapter_model.safetensors</c> with
/// <c>base_model.model.&lt;module&gt;.lora_A.weight</c> [r, in] and <c>.lora_B.weight</c> [out, r], and
/// <c>adapter_config.json</c> — what <c>PeftModel.from_pretrained</c> loads, and what it writes.
/// </summary>
/// <remarks>
/// Adapters are always stored in Hugging Face layout. A model loaded from a llama2.c file keeps llama2.c's RoPE
/// convention (adjacent pairs), whose q_proj/k_proj output rows are a permutation of Hugging Face's
/// (rotate-half): B of those layers is permuted on save and permuted back on load, so the file matches the
/// model that Checkpoints.ConvertLlama2cToHuggingFace writes.
/// </remarks>
public static class PeftAdapter
{
    /// <summary>The weights file name.</summary>
    public const string WeightsFile = "adapter_model.safetensors";

    /// <summary>The config file name.</summary>
    public const string ConfigFile = "adapter_config.json";

    private const string KeyPrefix = "base_model.model.";

    /// <summary>The safetensors key of a module's A or B.</summary>
    public static string Key(string module, char which) => $"{KeyPrefix}{module}.lora_{which}.weight";

    /// <summary>
    /// Writes the adapter of <paramref name="lora"/> into <paramref name="directory"/> (created if missing; each file
    /// written atomically), in fp32 or bf16 (<paramref name="dtype"/>).
    /// </summary>
    public static void Save(LoraModel lora, string directory, string baseModelNameOrPath, ScalarType dtype = ScalarType.Float32)
    {
        ArgumentNullException.ThrowIfNull(lora);
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16))
            throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "adapters are saved in Float32 or BFloat16");
        Directory.CreateDirectory(directory);
        var config = lora.Model.Config;
        using var scope = NewDisposeScope();
        using var writer = new SafetensorsWriter();
        foreach (var (name, layer) in lora.Layers)
        {
            var a = layer.A.detach();
            var b = ToHuggingFaceRows(name, layer.B.detach(), config);
            foreach (var (which, t) in new[] { ('A', a), ('B', b) })
            {
                var c = t.to(dtype).contiguous();
                writer.Add(Key(name, which), TensorViews.RowView(c), c.shape);
            }
        }
        writer.SetMetadata("format", "pt");
        writer.Write(Path.Combine(directory, WeightsFile));
        WriteConfig(Path.Combine(directory, ConfigFile), lora.Options, lora.TargetModuleNames, baseModelNameOrPath);
    }

    /// <summary>adapter_config.json with every field FORMATS.md lists (and PEFT's other LoRA defaults).</summary>
    public static JsonObject ConfigJson(LoraOptions options, IReadOnlyList<string> targetModules, string baseModelNameOrPath) => new()
    {
        ["peft_type"] = "LORA",
        ["task_type"] = "CAUSAL_LM",
        ["r"] = options.Rank,
        ["lora_alpha"] = options.Alpha,
        ["lora_dropout"] = options.Dropout,
        ["target_modules"] = new JsonArray(targetModules.Select(t => (JsonNode)t).ToArray()),
        ["bias"] = "none",
        ["fan_in_fan_out"] = false,
        ["use_rslora"] = options.UseRsLora,
        ["base_model_name_or_path"] = baseModelNameOrPath,
        ["inference_mode"] = true,
        ["modules_to_save"] = null,
        ["init_lora_weights"] = true,
        ["layers_to_transform"] = null,
        ["layers_pattern"] = null,
        ["rank_pattern"] = new JsonObject(),
        ["alpha_pattern"] = new JsonObject(),
        ["revision"] = null,
    };

    private static void WriteConfig(string path, LoraOptions options, IReadOnlyList<string> targets, string baseModel) =>
        Checkpoints.WriteJson(path, ConfigJson(options, targets, baseModel));

    /// <summary>
    /// Reads an adapter directory (PEFT's or ours) and checks it on its own: the config's fields and types, every
    /// key of the weights file, A/B pairs complete, shapes [r, in] / [out, r] with the config's r.
    /// </summary>
    /// <exception cref="FileNotFoundException">A file is missing.</exception>
    /// <exception cref="InvalidDataException">Anything malformed (the message names the file and the key).</exception>
    public static PeftAdapterData Read(string directory)
    {
        string cfgPath = Path.Combine(directory, ConfigFile);
        string stPath = Path.Combine(directory, WeightsFile);
        if (!File.Exists(cfgPath)) throw new FileNotFoundException($"{directory}: no {ConfigFile}: not a PEFT adapter directory", cfgPath);
        if (!File.Exists(stPath))
        {
            string bin = Path.Combine(directory, "adapter_model.bin");
            throw new FileNotFoundException(File.Exists(bin)
                ? $"{bin}: pickled PyTorch adapters are not read (they can run code); save the adapter with safe_serialization=True"
                : $"{directory}: no {WeightsFile}", stPath);
        }
        var config = ParseConfig(cfgPath);
        var weights = new Dictionary<string, (Tensor A, Tensor B)>(StringComparer.Ordinal);
        var halves = new Dictionary<string, Tensor?[]>(StringComparer.Ordinal);
        try
        {
            using var file = SafetensorsFile.Open(stPath);
            foreach (var t in file.Tensors)
            {
                string key = t.Name;
                if (!key.StartsWith(KeyPrefix, StringComparison.Ordinal) || !(key.EndsWith(".lora_A.weight", StringComparison.Ordinal) || key.EndsWith(".lora_B.weight", StringComparison.Ordinal)))
                    throw new InvalidDataException($"{stPath}: unexpected tensor \"{key}\" (a LoRA adapter holds base_model.model.<module>.lora_A.weight / lora_B.weight only)");
                string module = key[KeyPrefix.Length..^".lora_A.weight".Length];
                int which = key[^8] == 'A' ? 0 : 1;
                if (t.Shape.Length != 2)
                    throw new InvalidDataException($"{stPath}: {key} has shape {t.ShapeText}; LoRA weights are 2-D");
                if (t.Dtype is not (QLoraDtype.F32 or QLoraDtype.Bf16 or QLoraDtype.F16))
                    throw new InvalidDataException($"{stPath}: {key} is {t.DtypeName}; expected F32, BF16 or F16");
                long rankDim = which == 0 ? t.Shape[0] : t.Shape[1];
                if (rankDim != config.Rank)
                    throw new InvalidDataException($"{stPath}: {key} has shape {t.ShapeText}, but r is {config.Rank} in {ConfigFile} " +
                                                   $"(A must be [r, in], B [out, r])");
                if (!halves.TryGetValue(module, out var pair)) halves[module] = pair = new Tensor?[2];
                pair[which] = TensorViews.FromView(file.Data(t), t.Shape, ScalarType.Float32);
            }
            foreach (var (module, pair) in halves)
            {
                if (pair[0] is null || pair[1] is null)
                    throw new InvalidDataException($"{stPath}: {module} has lora_{(pair[0] is null ? 'A' : 'B')}.weight missing");
                weights[module] = (pair[0]!, pair[1]!);
            }
            if (weights.Count == 0) throw new InvalidDataException($"{stPath}: the adapter holds no LoRA weights");
            return new PeftAdapterData(directory, config, weights);
        }
        catch
        {
            foreach (var pair in halves.Values)
                foreach (var t in pair) t?.Dispose();
            throw;
        }
    }

    /// <summary>Parses adapter_config.json (the fields this library uses; unsupported features are refused by name).</summary>
    public static PeftAdapterConfig ParseConfig(string path)
    {
        JsonObject o;
        try
        {
            o = JsonNode.Parse(File.ReadAllText(path)) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
        string Str(string key)
        {
            if (o[key] is JsonValue v && v.TryGetValue(out string? s)) return s;
            throw new InvalidDataException($"{path}: \"{key}\" is missing or not a string");
        }
        double Num(string key)
        {
            if (o[key] is JsonValue v && v.TryGetValue(out double d)) return d;
            throw new InvalidDataException($"{path}: \"{key}\" is missing or not a number");
        }
        bool Flag(string key, bool fallback)
        {
            if (o[key] is null) return fallback;
            if (o[key] is JsonValue v && v.TryGetValue(out bool b)) return b;
            throw new InvalidDataException($"{path}: \"{key}\" is not true or false");
        }
        if (Str("peft_type") != "LORA") throw new InvalidDataException($"{path}: peft_type is \"{Str("peft_type")}\"; only LORA adapters are supported");
        double r = Num("r");
        if (r < 1 || r != Math.Floor(r)) throw new InvalidDataException($"{path}: r = {r} is not a positive integer");
        double alpha = Num("lora_alpha");
        if (!(alpha > 0)) throw new InvalidDataException($"{path}: lora_alpha = {alpha} must be positive");
        double dropout = o["lora_dropout"] is null ? 0 : Num("lora_dropout");
        if (Flag("fan_in_fan_out", false)) throw new InvalidDataException($"{path}: fan_in_fan_out adapters (GPT-2 Conv1D layers) are not supported");
        if (o["bias"] is not null && Str("bias") != "none") throw new InvalidDataException($"{path}: bias \"{Str("bias")}\" is not supported (only \"none\")");
        if (Flag("use_dora", false)) throw new InvalidDataException($"{path}: DoRA adapters (use_dora) are not supported");
        foreach (string key in new[] { "rank_pattern", "alpha_pattern" })
            if (o[key] is JsonObject p && p.Count > 0) throw new InvalidDataException($"{path}: per-layer {key} is not supported");
        var targets = new List<string>();
        switch (o["target_modules"])
        {
            case JsonArray arr:
                foreach (var n in arr)
                    targets.Add(n is JsonValue v && v.TryGetValue(out string? s) ? s : throw new InvalidDataException($"{path}: target_modules holds a non-string"));
                break;
            case JsonValue v when v.TryGetValue(out string? s):
                targets.Add(s);   // PEFT also allows one string (a regular expression); used as a name suffix here
                break;
            default:
                throw new InvalidDataException($"{path}: \"target_modules\" is missing or not a list of names");
        }
        string? baseModel = o["base_model_name_or_path"] is JsonValue bv && bv.TryGetValue(out string? bs) ? bs : null;
        return new PeftAdapterConfig((int)r, alpha, dropout, targets, Flag("use_rslora", false), baseModel);
    }

    /// <summary>
    /// Puts a read adapter onto <paramref name="model"/>: every module it names must be a linear layer of the model
    /// with matching in/out sizes (checked before anything is changed); LoRA layers are injected there and A/B
    /// copied in (B of q_proj/k_proj permuted back for a llama2.c-convention model).
    /// </summary>
    /// <exception cref="InvalidDataException">A module the model does not have, or a shape that does not fit (named).</exception>
    public static LoraModel Apply(LlamaForCausalLM model, PeftAdapterData adapter, ScalarType computeDtype = ScalarType.Float32)
    {
        var linear = model.LinearLayers().ToDictionary(l => l.Name, l => l.Layer, StringComparer.Ordinal);
        foreach (var (module, (a, b)) in adapter.Weights)
        {
            if (!linear.TryGetValue(module, out var layer))
                throw new InvalidDataException(
                    $"{adapter.Directory}: the adapter adapts \"{module}\", which is not a linear layer of this model (e.g. {linear.Keys.First()})");
            if (a.shape[1] != layer.InFeatures || b.shape[0] != layer.OutFeatures)
                throw new InvalidDataException(
                    $"{adapter.Directory}: {module}: lora_A [{string.Join(", ", a.shape)}] / lora_B [{string.Join(", ", b.shape)}] do not fit the model's layer " +
                    $"[out {layer.OutFeatures}, in {layer.InFeatures}] (an adapter for a different model?)");
        }
        // Exactly the adapter's modules: their full names as targets.
        var options = adapter.Config.ToOptions(computeDtype) with { TargetModules = adapter.Weights.Keys.Order(StringComparer.Ordinal).ToList() };
        var lora = LoraModel.Inject(model, options, seed: 0);
        using var _ = no_grad();
        foreach (var (name, layer) in lora.Layers)
        {
            var (a, b) = adapter.Weights[name];
            layer.A.copy_(a);
            using var rows = FromHuggingFaceRows(name, b, model.Config);
            layer.B.copy_(rows);
        }
        return lora;
    }

    /// <summary>Reads an adapter directory and applies it to <paramref name="model"/>.</summary>
    public static LoraModel Load(LlamaForCausalLM model, string directory, ScalarType computeDtype = ScalarType.Float32)
    {
        using var data = Read(directory);
        return Apply(model, data, computeDtype);
    }

    // ------------------------------------------------------------------ RoPE row order

    /// <summary>True when <paramref name="module"/>'s output rows follow RoPE's pairing (q_proj, k_proj) and the model uses adjacent pairs.</summary>
    public static bool NeedsRopePermutation(string module, LlamaConfig config) =>
        config.RopeStyle == RopeStyle.Adjacent &&
        (module.EndsWith(".q_proj", StringComparison.Ordinal) || module.EndsWith(".k_proj", StringComparison.Ordinal));

    /// <summary>
    /// Row index map from adjacent-pair (llama2.c/Meta) to rotate-half (Hugging Face) order for <paramref name="heads"/>
    /// heads of <paramref name="headDim"/> rows: hf[h*d + j] = meta[h*d + 2j], hf[h*d + d/2 + j] = meta[h*d + 2j + 1].
    /// </summary>
    public static long[] RotateHalfRowOrder(int heads, int headDim)
    {
        var perm = new long[(long)heads * headDim];
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < half; j++)
            {
                perm[h * headDim + j] = h * headDim + 2 * j;
                perm[h * headDim + half + j] = h * headDim + 2 * j + 1;
            }
        return perm;
    }

    private static int HeadsOf(string module, LlamaConfig config) =>
        module.EndsWith(".q_proj", StringComparison.Ordinal) ? config.NumHeads : config.NumKvHeads;

    /// <summary>Rows of a [out, ...] tensor of <paramref name="module"/> in Hugging Face order (a new tensor, or a copy when no permutation applies).</summary>
    public static Tensor ToHuggingFaceRows(string module, Tensor rows, LlamaConfig config)
    {
        if (!NeedsRopePermutation(module, config)) return rows.clone();
        using var idx = tensor(RotateHalfRowOrder(HeadsOf(module, config), config.HeadDim), ScalarType.Int64);
        return rows.index_select(0, idx);
    }

    /// <summary>The inverse of <see cref="ToHuggingFaceRows"/>.</summary>
    public static Tensor FromHuggingFaceRows(string module, Tensor rows, LlamaConfig config)
    {
        if (!NeedsRopePermutation(module, config)) return rows.clone();
        long[] perm = RotateHalfRowOrder(HeadsOf(module, config), config.HeadDim);
        var inverse = new long[perm.Length];
        for (long i = 0; i < perm.Length; i++) inverse[perm[i]] = i;
        using var idx = tensor(inverse, ScalarType.Int64);
        return rows.index_select(0, idx);
    }
}
