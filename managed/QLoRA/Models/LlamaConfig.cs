using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace QLoRA.Models;

/// <summary>Which pairs of a head's dimensions RoPE rotates together.</summary>
public enum RopeStyle
{
    /// <summary>Hugging Face's rotate_half: dimension i with i + head_dim/2.</summary>
    Half,

    /// <summary>llama2.c and Meta's original code: adjacent pairs (2i, 2i+1).</summary>
    Adjacent,
}

/// <summary>RoPE frequency scaling (config.json <c>rope_scaling</c>): none, "linear" or "llama3".</summary>
/// <param name="Type">"linear" or "llama3".</param>
/// <param name="Factor">Scale factor.</param>
/// <param name="LowFreqFactor">llama3 only.</param>
/// <param name="HighFreqFactor">llama3 only.</param>
/// <param name="OriginalMaxPositions">llama3 only: original_max_position_embeddings.</param>
public sealed record RopeScaling(string Type, double Factor, double LowFreqFactor = 1, double HighFreqFactor = 4, int OriginalMaxPositions = 8192);

/// <summary>
/// The shape and hyper-parameters of a LLaMA-family decoder (LLaMA 1/2/3, Mistral, TinyLlama, SmolLM, llama2.c):
/// what a Hugging Face config.json or a llama2.c header says.
/// </summary>
public sealed record LlamaConfig
{
    /// <summary>config.json model_type values this decoder runs.</summary>
    public static readonly IReadOnlyList<string> SupportedModelTypes = ["llama", "mistral"];

    /// <summary>Vocabulary size (rows of the embedding and the output head).</summary>
    public required int VocabSize { get; init; }

    /// <summary>Model width (hidden_size, llama2.c dim).</summary>
    public required int HiddenSize { get; init; }

    /// <summary>MLP width (intermediate_size, llama2.c hidden_dim).</summary>
    public required int IntermediateSize { get; init; }

    /// <summary>Decoder layers.</summary>
    public required int NumLayers { get; init; }

    /// <summary>Query heads.</summary>
    public required int NumHeads { get; init; }

    /// <summary>Key/value heads (GQA when fewer than <see cref="NumHeads"/>).</summary>
    public required int NumKvHeads { get; init; }

    /// <summary>Dimension of one head (head_dim; default hidden_size / num_attention_heads).</summary>
    public int HeadDim { get; init; }

    /// <summary>RMSNorm epsilon.</summary>
    public double RmsNormEps { get; init; } = 1e-5;

    /// <summary>RoPE base.</summary>
    public double RopeTheta { get; init; } = 10000;

    /// <summary>RoPE frequency scaling, or null.</summary>
    public RopeScaling? RopeScaling { get; init; }

    /// <summary>Which RoPE pairing the weights were trained with.</summary>
    public RopeStyle RopeStyle { get; init; } = RopeStyle.Half;

    /// <summary>Context length the model supports (max_position_embeddings, llama2.c seq_len).</summary>
    public int MaxPositions { get; init; } = 2048;

    /// <summary>The output head shares the embedding's weight.</summary>
    public bool TieWordEmbeddings { get; init; }

    /// <summary>Mistral's sliding attention window (null: full causal attention).</summary>
    public int? SlidingWindow { get; init; }

    /// <summary>Beginning-of-sequence token id, if known.</summary>
    public int? BosTokenId { get; init; }

    /// <summary>End-of-sequence token ids (generation stops on any).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    /// <summary>config.json model_type ("llama" for llama2.c models).</summary>
    public string ModelType { get; init; } = "llama";

    /// <summary>config.json torch_dtype ("float32", "bfloat16", "float16").</summary>
    public string TorchDtype { get; init; } = "float32";

    /// <summary>Query width: NumHeads x HeadDim.</summary>
    public int QueryDim => NumHeads * HeadDim;

    /// <summary>Key/value width: NumKvHeads x HeadDim.</summary>
    public int KvDim => NumKvHeads * HeadDim;

    /// <summary>Checks the numbers fit together; <paramref name="source"/> names the file in messages.</summary>
    /// <exception cref="InvalidDataException">A value is out of range or inconsistent.</exception>
    public LlamaConfig Validate(string source)
    {
        void Positive(string key, long v)
        {
            if (v <= 0) throw new InvalidDataException($"{source}: \"{key}\" must be positive, got {v}");
        }
        Positive("vocab_size", VocabSize);
        Positive("hidden_size", HiddenSize);
        Positive("intermediate_size", IntermediateSize);
        Positive("num_hidden_layers", NumLayers);
        Positive("num_attention_heads", NumHeads);
        Positive("num_key_value_heads", NumKvHeads);
        Positive("head_dim", HeadDim);
        Positive("max_position_embeddings", MaxPositions);
        if (NumHeads % NumKvHeads != 0)
            throw new InvalidDataException($"{source}: num_attention_heads {NumHeads} is not a multiple of num_key_value_heads {NumKvHeads}");
        if (HeadDim % 2 != 0)
            throw new InvalidDataException($"{source}: head_dim {HeadDim} is odd; RoPE needs pairs");
        if (!(RmsNormEps > 0) || !double.IsFinite(RmsNormEps))
            throw new InvalidDataException($"{source}: \"rms_norm_eps\" must be a positive number, got {RmsNormEps}");
        if (!(RopeTheta > 0) || !double.IsFinite(RopeTheta))
            throw new InvalidDataException($"{source}: \"rope_theta\" must be a positive number, got {RopeTheta}");
        if (SlidingWindow is <= 0)
            throw new InvalidDataException($"{source}: \"sliding_window\" must be positive, got {SlidingWindow}");
        return this;
    }

    /// <summary>
    /// Parses a Hugging Face config.json of a LLaMA-family model.
    /// </summary>
    /// <exception cref="InvalidDataException">Not JSON, an unsupported architecture or option, or a missing or wrong key (the message names the file and the key).</exception>
    public static LlamaConfig FromHuggingFaceJson(string json, string source)
    {
        JsonObject o;
        try
        {
            o = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { AllowTrailingCommas = false }) as JsonObject
                ?? throw new InvalidDataException($"{source}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON: {e.Message}", e);
        }
        var r = new JsonReaderHelper(o, source);
        string modelType = r.String("model_type", required: false) ?? "";
        var archs = r.StringArray("architectures");
        if (modelType.Length == 0 && archs.Count == 0)
            throw new InvalidDataException($"{source}: neither \"model_type\" nor \"architectures\" says what model this is");
        if (modelType.Length > 0 && !SupportedModelTypes.Contains(modelType))
            throw new InvalidDataException(
                $"{source}: model_type \"{modelType}\" is not supported (supported: {string.Join(", ", SupportedModelTypes)}: LLaMA 1/2/3, Mistral, TinyLlama, SmolLM and other LlamaForCausalLM models)");
        string[] supportedArchs = ["LlamaForCausalLM", "MistralForCausalLM"];
        foreach (string a in archs)
            if (!supportedArchs.Contains(a))
                throw new InvalidDataException($"{source}: architecture \"{a}\" is not supported (supported: {string.Join(", ", supportedArchs)})");
        if (modelType.Length == 0) modelType = archs[0] == "MistralForCausalLM" ? "mistral" : "llama";

        if (r.Bool("attention_bias") == true)
            throw new InvalidDataException($"{source}: \"attention_bias\": true (biases on q/k/v/o) is not supported");
        if (r.Bool("mlp_bias") == true)
            throw new InvalidDataException($"{source}: \"mlp_bias\": true is not supported");
        string? act = r.String("hidden_act", required: false);
        if (act is not null && act != "silu")
            throw new InvalidDataException($"{source}: \"hidden_act\": \"{act}\" is not supported (LLaMA uses silu)");

        int hidden = r.Int("hidden_size")!.Value;
        int heads = r.Int("num_attention_heads")!.Value;
        int kvHeads = r.Int("num_key_value_heads", required: false) ?? heads;
        int headDim = r.Int("head_dim", required: false) ?? (heads > 0 ? hidden / heads : 0);
        if (heads > 0 && r.Int("head_dim", required: false) is null && hidden % heads != 0)
            throw new InvalidDataException($"{source}: hidden_size {hidden} is not a multiple of num_attention_heads {heads} (and no \"head_dim\")");

        RopeScaling? scaling = null;
        if (o["rope_scaling"] is JsonObject rs)
        {
            var rr = new JsonReaderHelper(rs, source + " rope_scaling");
            string type = rr.String("rope_type", required: false) ?? rr.String("type", required: false)
                ?? throw new InvalidDataException($"{source}: \"rope_scaling\" has no \"rope_type\"");
            switch (type)
            {
                case "default":
                    break;
                case "linear":
                    scaling = new RopeScaling("linear", rr.Double("factor")!.Value);
                    break;
                case "llama3":
                    scaling = new RopeScaling("llama3", rr.Double("factor")!.Value, rr.Double("low_freq_factor")!.Value,
                        rr.Double("high_freq_factor")!.Value, rr.Int("original_max_position_embeddings")!.Value);
                    break;
                default:
                    throw new InvalidDataException(
                        $"{source}: rope_scaling type \"{type}\" is not supported (supported: linear, llama3; dynamic, yarn and longrope are not implemented)");
            }
            if (scaling is { Factor: <= 0 })
                throw new InvalidDataException($"{source}: rope_scaling factor must be positive, got {scaling.Factor}");
        }
        else if (o["rope_scaling"] is not null and not JsonValue)
            throw new InvalidDataException($"{source}: \"rope_scaling\" must be an object or null");

        var eos = new List<int>();
        switch (o["eos_token_id"])
        {
            case JsonArray a:
                foreach (var e in a) eos.Add(e!.GetValue<int>());
                break;
            case JsonValue v when v.TryGetValue(out int id):
                eos.Add(id);
                break;
        }
        int? sliding = modelType == "mistral" ? r.Int("sliding_window", required: false) : null;
        if (r.Bool("use_sliding_window") == false) sliding = null;

        return new LlamaConfig
        {
            ModelType = modelType,
            VocabSize = r.Int("vocab_size")!.Value,
            HiddenSize = hidden,
            IntermediateSize = r.Int("intermediate_size")!.Value,
            NumLayers = r.Int("num_hidden_layers")!.Value,
            NumHeads = heads,
            NumKvHeads = kvHeads,
            HeadDim = headDim,
            RmsNormEps = r.Double("rms_norm_eps", required: false) ?? 1e-6,
            RopeTheta = r.Double("rope_theta", required: false) ?? 10000,
            RopeScaling = scaling,
            RopeStyle = RopeStyle.Half,
            MaxPositions = r.Int("max_position_embeddings", required: false) ?? 2048,
            TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? false,
            SlidingWindow = sliding,
            BosTokenId = r.Int("bos_token_id", required: false),
            EosTokenIds = eos,
            TorchDtype = r.String("torch_dtype", required: false) ?? r.String("dtype", required: false) ?? "float32",
        }.Validate(source);
    }

    /// <summary>The config.json of this model in Hugging Face's form (LlamaForCausalLM).</summary>
    public JsonObject ToHuggingFaceJson()
    {
        var o = new JsonObject
        {
            ["architectures"] = new JsonArray(ModelType == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM"),
            ["model_type"] = ModelType,
            ["vocab_size"] = VocabSize,
            ["hidden_size"] = HiddenSize,
            ["intermediate_size"] = IntermediateSize,
            ["num_hidden_layers"] = NumLayers,
            ["num_attention_heads"] = NumHeads,
            ["num_key_value_heads"] = NumKvHeads,
            ["head_dim"] = HeadDim,
            ["hidden_act"] = "silu",
            ["max_position_embeddings"] = MaxPositions,
            ["rms_norm_eps"] = RmsNormEps,
            ["rope_theta"] = RopeTheta,
            ["tie_word_embeddings"] = TieWordEmbeddings,
            ["attention_bias"] = false,
            ["mlp_bias"] = false,
            ["torch_dtype"] = TorchDtype,
        };
        if (BosTokenId is { } bos) o["bos_token_id"] = bos;
        if (EosTokenIds.Count == 1) o["eos_token_id"] = EosTokenIds[0];
        else if (EosTokenIds.Count > 1) o["eos_token_id"] = new JsonArray(EosTokenIds.Select(e => (JsonNode)e).ToArray());
        if (RopeScaling is { } s)
            o["rope_scaling"] = s.Type == "llama3"
                ? new JsonObject
                {
                    ["rope_type"] = "llama3",
                    ["factor"] = s.Factor,
                    ["low_freq_factor"] = s.LowFreqFactor,
                    ["high_freq_factor"] = s.HighFreqFactor,
                    ["original_max_position_embeddings"] = s.OriginalMaxPositions,
                }
                : new JsonObject { ["rope_type"] = s.Type, ["factor"] = s.Factor };
        if (SlidingWindow is { } w) o["sliding_window"] = w;
        return o;
    }
}

/// <summary>Typed reads of JSON keys with messages that name the file and the key.</summary>
internal sealed class JsonReaderHelper(JsonObject o, string source)
{
    public int? Int(string key, bool required = true)
    {
        JsonNode? n = Node(key, required);
        if (n is null) return null;
        if (n is JsonValue v)
        {
            if (v.TryGetValue(out int i)) return i;
            if (v.TryGetValue(out double d) && d == Math.Floor(d) && d is >= int.MinValue and <= int.MaxValue) return (int)d;
        }
        throw new InvalidDataException($"{source}: \"{key}\" must be an integer, got {n.ToJsonString()}");
    }

    public double? Double(string key, bool required = true)
    {
        JsonNode? n = Node(key, required);
        if (n is null) return null;
        if (n is JsonValue v && v.TryGetValue(out double d)) return d;
        throw new InvalidDataException($"{source}: \"{key}\" must be a number, got {n.ToJsonString()}");
    }

    public bool? Bool(string key)
    {
        JsonNode? n = Node(key, false);
        if (n is null) return null;
        if (n is JsonValue v && v.TryGetValue(out bool b)) return b;
        throw new InvalidDataException($"{source}: \"{key}\" must be true or false, got {n.ToJsonString()}");
    }

    public string? String(string key, bool required = true)
    {
        JsonNode? n = Node(key, required);
        if (n is null) return null;
        if (n is JsonValue v && v.TryGetValue(out string? s)) return s;
        throw new InvalidDataException($"{source}: \"{key}\" must be a string, got {n.ToJsonString()}");
    }

    public List<string> StringArray(string key)
    {
        JsonNode? n = Node(key, false);
        if (n is null) return [];
        if (n is JsonArray a && a.All(e => e is JsonValue v && v.TryGetValue(out string? _)))
            return a.Select(e => e!.GetValue<string>()).ToList();
        throw new InvalidDataException($"{source}: \"{key}\" must be an array of strings, got {n.ToJsonString()}");
    }

    private JsonNode? Node(string key, bool required)
    {
        if (o.TryGetPropertyValue(key, out JsonNode? n) && n is not null) return n;
        if (required) throw new InvalidDataException($"{source}: missing required key \"{key}\"");
        return null;
    }

    public static string Format(double d) => d.ToString("R", CultureInfo.InvariantCulture);
}
