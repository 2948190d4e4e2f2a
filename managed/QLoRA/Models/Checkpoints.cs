using System.Text.Json;
using System.Text.Json.Nodes;

using QLoRA.IO;
using QLoRA.Native;
using QLoRA.Native.Interop;
using QLoRA.Tokenization;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Models;

/// <summary>What a checkpoint writer produced.</summary>
/// <param name="Directory">The output directory.</param>
/// <param name="Tensors">Tensors written to model.safetensors.</param>
/// <param name="Bytes">Size of model.safetensors.</param>
/// <param name="QuantizedParams">Parameters of the 4-bit linear weights (0 for a dense export).</param>
/// <param name="QuantizedBytes">Bytes of the 4-bit linear weights (nibbles + scales).</param>
public sealed record CheckpointWritten(string Directory, int Tensors, long Bytes, long QuantizedParams, long QuantizedBytes)
{
    /// <summary>Bits per parameter over the quantized linear weights (4.127 for NF4+DQ at block 64).</summary>
    public double BitsPerParam => QuantizedParams == 0 ? 0 : QuantizedBytes * 8.0 / QuantizedParams;
}

/// <summary>
/// Writers of Hugging Face model directories: llama2.c → HF (with the RoPE row permutation), and a loaded model
/// → a bitsandbytes 4-bit HF directory (<c>qlora quantize</c>). Tensors go through the native atomic
/// safetensors writer; JSON files are written to a temporary name and renamed.
/// </summary>
public static class Checkpoints
{
    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>
    /// Converts a llama2.c model.bin + tokenizer.bin into a Hugging Face directory: config.json, model.safetensors
    /// (fp32, HF names; wq and wk rows permuted from adjacent-pair to rotate-half RoPE so HF's code gives the same
    /// logits), tokenizer.model (a SentencePiece ModelProto built from tokenizer.bin), tokenizer_config.json and
    /// generation_config.json.
    /// </summary>
    public static unsafe CheckpointWritten ConvertLlama2cToHuggingFace(string modelPath, string tokenizerPath, string outDir)
    {
        using var file = Llama2cModelFile.Open(modelPath);
        var c = file.Config;
        var tokens = Llama2cTokenizerFile.Read(tokenizerPath, c.VocabSize);
        var sp = SentencePieceModel.FromLlama2c(tokens, tokenizerPath);
        int headDim = c.Dim / c.Heads;
        var config = new LlamaConfig
        {
            VocabSize = c.VocabSize, HiddenSize = c.Dim, IntermediateSize = c.HiddenDim, NumLayers = c.Layers, NumHeads = c.Heads,
            NumKvHeads = c.KvHeads, HeadDim = headDim, RmsNormEps = 1e-5, RopeTheta = 10000, MaxPositions = c.SeqLen,
            TieWordEmbeddings = c.SharedClassifier, BosTokenId = 1, EosTokenIds = [2], TorchDtype = "float32",
        }.Validate(modelPath);
        Directory.CreateDirectory(outDir);
        using var writer = new SafetensorsWriter();
        int count = 0;
        void Add(string name, QLoraView v, params long[] shape)
        {
            writer.Add(name, v, shape, borrow: true, owner: file);
            count++;
        }
        void AddPermuted(string name, QLoraView v, int heads, long rows, long cols)
        {
            writer.Add(name, PermuteForRotateHalf(v, heads, rows, cols), QLoraDtype.F32, rows, cols);
            count++;
        }
        int d = c.Dim, kv = config.KvDim, h = c.HiddenDim;
        Add("model.embed_tokens.weight", file.Weight(QLoraLlama2cWeight.TokenEmbedding), c.VocabSize, d);
        for (int l = 0; l < c.Layers; l++)
        {
            string p = $"model.layers.{l}.";
            Add(p + "input_layernorm.weight", file.Weight(QLoraLlama2cWeight.RmsAtt, l), d);
            AddPermuted(p + "self_attn.q_proj.weight", file.Weight(QLoraLlama2cWeight.Wq, l), c.Heads, d, d);
            AddPermuted(p + "self_attn.k_proj.weight", file.Weight(QLoraLlama2cWeight.Wk, l), c.KvHeads, kv, d);
            Add(p + "self_attn.v_proj.weight", file.Weight(QLoraLlama2cWeight.Wv, l), kv, d);
            Add(p + "self_attn.o_proj.weight", file.Weight(QLoraLlama2cWeight.Wo, l), d, d);
            Add(p + "post_attention_layernorm.weight", file.Weight(QLoraLlama2cWeight.RmsFfn, l), d);
            Add(p + "mlp.gate_proj.weight", file.Weight(QLoraLlama2cWeight.W1, l), h, d);
            Add(p + "mlp.up_proj.weight", file.Weight(QLoraLlama2cWeight.W3, l), h, d);
            Add(p + "mlp.down_proj.weight", file.Weight(QLoraLlama2cWeight.W2, l), d, h);
        }
        Add("model.norm.weight", file.Weight(QLoraLlama2cWeight.RmsFinal), d);
        if (!c.SharedClassifier) Add("lm_head.weight", file.Weight(QLoraLlama2cWeight.Wcls), c.VocabSize, d);
        writer.SetMetadata("format", "pt");
        string st = Path.Combine(outDir, "model.safetensors");
        writer.Write(st);

        WriteJson(Path.Combine(outDir, "config.json"), config.ToHuggingFaceJson());
        WriteBytes(Path.Combine(outDir, "tokenizer.model"), sp.ToProtobuf());
        WriteJson(Path.Combine(outDir, "tokenizer_config.json"), LlamaTokenizerConfig(c.SeqLen));
        WriteJson(Path.Combine(outDir, "generation_config.json"), Llama2cGenerationConfig());
        return new CheckpointWritten(outDir, count, new FileInfo(st).Length, 0, 0);
    }

    /// <summary>
    /// Rows of a llama2.c wq/wk [heads x head_dim, cols] reordered for rotate-half RoPE: within each head, the
    /// even rows (first of each adjacent pair) then the odd rows — the inverse of the permutation in Hugging Face's
    /// convert_llama_weights_to_hf.
    /// </summary>
    public static unsafe float[] PermuteForRotateHalf(QLoraView v, int heads, long rows, long cols)
    {
        if (v.Dtype != QLoraDtype.F32 || v.Rows * v.Cols != rows * cols) throw new ArgumentException("expected an F32 view of [rows, cols]");
        long headDim = rows / heads, half = headDim / 2;
        var src = new ReadOnlySpan<float>(v.Data, checked((int)(rows * cols)));
        var dst = new float[rows * cols];
        for (long hh = 0; hh < heads; hh++)
            for (long j = 0; j < half; j++)
            {
                src.Slice((int)((hh * headDim + 2 * j) * cols), (int)cols).CopyTo(dst.AsSpan((int)((hh * headDim + j) * cols), (int)cols));
                src.Slice((int)((hh * headDim + 2 * j + 1) * cols), (int)cols).CopyTo(dst.AsSpan((int)((hh * headDim + half + j) * cols), (int)cols));
            }
        return dst;
    }

    /// <summary>
    /// Writes a loaded model whose linear layers are NF4/FP4 (<see cref="Linear4bit"/>) as a bitsandbytes 4-bit
    /// Hugging Face directory: model.safetensors (bitsandbytes keys and quant states; embeddings, norms and head in
    /// the model's compute dtype), config.json with quantization_config, and tokenizer files (copied from the
    /// source directory, or built from tokenizer.bin for a llama2.c source).
    /// </summary>
    /// <exception cref="InvalidOperationException">A linear layer is dense or Int4 (no bitsandbytes form).</exception>
    public static CheckpointWritten WriteBitsAndBytes(LoadedModel loaded, string outDir, string? llama2cTokenizerPath = null)
    {
        var model = loaded.Model;
        if (model.Config.RopeStyle != RopeStyle.Half)
            throw new InvalidOperationException(
                $"{loaded.Source}: the model uses llama2.c's adjacent-pair RoPE; Hugging Face checkpoints use rotate-half: load it with RotateHalf (the quantize command does) so wq/wk rows are permuted before quantizing");
        var layers = model.LinearLayers().ToList();
        var q4 = new List<(string Name, Linear4bit Layer)>();
        foreach (var (name, layer) in layers)
        {
            if (layer is not Linear4bit l)
                throw new InvalidOperationException($"{name} is {layer.Format}, not 4-bit: load the model with --quant nf4 or fp4 to write a bitsandbytes checkpoint");
            if (l.Weight.Info.Params.QuantType == QLoraQuantType.Int4)
                throw new InvalidOperationException("Int4 has no bitsandbytes checkpoint form (docs/quantization.md): use nf4 or fp4");
            q4.Add((name, l));
        }
        var first = q4[0].Layer.Weight.Info.Params;
        if (q4.Any(x => x.Layer.Weight.Info.Params != first))
            throw new InvalidOperationException("the linear layers use different quantization settings; bitsandbytes' quantization_config has one");
        Directory.CreateDirectory(outDir);
        using var writer = new SafetensorsWriter();
        int count = 0;
        long qParams = 0, qBytes = 0;
        foreach (var (name, layer) in q4)
        {
            writer.AddQ4(name + ".", layer.Weight);
            qParams += layer.InFeatures * layer.OutFeatures;
            qBytes += layer.StorageBytes;
            count += first.DoubleQuant ? 6 : 4;
        }
        var dense = new List<Tensor>();
        void AddDense(string name, Tensor t)
        {
            var c = t.detach().contiguous();
            dense.Add(c);
            writer.Add(name, TensorViews.RowView(c.dim() == 1 ? c.unsqueeze(0) : c), c.shape, borrow: true, owner: c);
            count++;
        }
        try
        {
            AddDense("model.embed_tokens.weight", model.Model.EmbedTokens.Weight);
            for (int l = 0; l < model.Config.NumLayers; l++)
            {
                var layer = model.Model.Layers[l];
                AddDense($"model.layers.{l}.input_layernorm.weight", layer.InputLayerNorm.Weight);
                AddDense($"model.layers.{l}.post_attention_layernorm.weight", layer.PostAttentionLayerNorm.Weight);
            }
            AddDense("model.norm.weight", model.Model.Norm.Weight);
            if (!model.Config.TieWordEmbeddings) AddDense("lm_head.weight", model.LmHead.Weight);
            writer.SetMetadata("format", "pt");
            string st = Path.Combine(outDir, "model.safetensors");
            writer.Write(st);

            string dtypeName = model.ComputeDtype == ScalarType.BFloat16 ? "bfloat16" : "float32";
            var cfg = (model.Config with { TorchDtype = dtypeName }).ToHuggingFaceJson();
            cfg["quantization_config"] = new JsonObject
            {
                ["quant_method"] = "bitsandbytes",
                ["load_in_4bit"] = true,
                ["load_in_8bit"] = false,
                ["bnb_4bit_quant_type"] = first.QuantType == QLoraQuantType.Nf4 ? "nf4" : "fp4",
                ["bnb_4bit_use_double_quant"] = first.DoubleQuant,
                ["bnb_4bit_compute_dtype"] = dtypeName,
                ["bnb_4bit_quant_storage"] = "uint8",
            };
            if (first.BlockSize != 64)
                cfg["quantization_config"]!["qlora_blocksize"] = first.BlockSize; // bitsandbytes always uses 64; the quant states carry the real value
            WriteJson(Path.Combine(outDir, "config.json"), cfg);
            CopyTokenizer(loaded, outDir, llama2cTokenizerPath);
            return new CheckpointWritten(outDir, count, new FileInfo(st).Length, qParams, qBytes);
        }
        finally
        {
            foreach (var t in dense) t.Dispose();
        }
    }

    /// <summary>Tokenizer files for a model directory: copied from a Hugging Face source directory, or built from llama2.c's tokenizer.bin.</summary>
    public static void CopyTokenizer(LoadedModel loaded, string outDir, string? llama2cTokenizerPath)
    {
        if (Directory.Exists(loaded.Source))
        {
            foreach (string f in new[] { "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json" })
            {
                string src = Path.Combine(loaded.Source, f);
                if (File.Exists(src) && Path.GetFullPath(src) != Path.GetFullPath(Path.Combine(outDir, f)))
                    File.Copy(src, Path.Combine(outDir, f), overwrite: true);
            }
            return;
        }
        string tok = llama2cTokenizerPath ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(loaded.Source))!, "tokenizer.bin");
        if (!File.Exists(tok))
            throw new FileNotFoundException($"{loaded.Source}: no tokenizer.bin to convert ({tok})");
        var sp = SentencePieceModel.FromLlama2c(Llama2cTokenizerFile.Read(tok, loaded.Model.Config.VocabSize), tok);
        WriteBytes(Path.Combine(outDir, "tokenizer.model"), sp.ToProtobuf());
        WriteJson(Path.Combine(outDir, "tokenizer_config.json"), LlamaTokenizerConfig(loaded.Model.Config.MaxPositions));
        WriteJson(Path.Combine(outDir, "generation_config.json"), Llama2cGenerationConfig());
    }

    // llama2.c's story models delimit stories with BOS (id 1) — run.c stops there — and have EOS (id 2) too.
    private static JsonObject Llama2cGenerationConfig() => new() { ["bos_token_id"] = 1, ["eos_token_id"] = new JsonArray(2, 1) };

    private static JsonObject LlamaTokenizerConfig(int maxLength) => new()
    {
        ["tokenizer_class"] = "LlamaTokenizer",
        ["add_bos_token"] = true,
        ["add_eos_token"] = false,
        ["bos_token"] = "<s>",
        ["eos_token"] = "</s>",
        ["unk_token"] = "<unk>",
        ["pad_token"] = null,
        ["legacy"] = true,
        ["clean_up_tokenization_spaces"] = false,
        ["model_max_length"] = maxLength,
    };

    /// <summary>Writes JSON atomically (temporary file + rename).</summary>
    public static void WriteJson(string path, JsonNode json) => WriteBytes(path, JsonSerializer.SerializeToUtf8Bytes(json, Indented));

    /// <summary>Writes bytes atomically (temporary file in the same directory, flushed, then renamed).</summary>
    public static void WriteBytes(string path, byte[] bytes)
    {
        string tmp = path + ".tmp-" + Environment.ProcessId;
        try
        {
            using (var f = new FileStream(tmp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                f.Write(bytes);
                f.Flush(flushToDisk: true);
            }
            File.Move(tmp, path, overwrite: true);
        }
        catch
        {
            if (File.Exists(tmp)) File.Delete(tmp);
            throw;
        }
    }
}
