using System.Text.Json.Nodes;

using QLoRA.Models;
using QLoRA.Native;
using QLoRA.Native.Interop;

namespace QLoRA.IO;

/// <summary>
/// What is in a checkpoint (the <c>qlora inspect</c> report): tensors with dtype, shape and bytes, bitsandbytes
/// 4-bit layers with their quant states, parameter and memory totals; for llama2.c files the header.
/// </summary>
public static class CheckpointInspector
{
    /// <summary>Inspects a .safetensors file, a model.safetensors.index.json, a model directory, a llama2.c model.bin or tokenizer.bin.</summary>
    /// <exception cref="FileNotFoundException">The path does not exist.</exception>
    /// <exception cref="InvalidDataException">The file is none of these (the message says what each reader said).</exception>
    public static JsonObject Inspect(string path)
    {
        if (Directory.Exists(path))
        {
            var o = new JsonObject { ["path"] = Path.GetFullPath(path) };
            string cfg = Path.Combine(path, "config.json");
            if (File.Exists(cfg))
            {
                var config = Tokenization.TextTokenizer.ReadJsonObject(cfg);
                o["config"] = new JsonObject
                {
                    ["model_type"] = config["model_type"]?.DeepClone(),
                    ["architectures"] = config["architectures"]?.DeepClone(),
                    ["num_hidden_layers"] = config["num_hidden_layers"]?.DeepClone(),
                    ["hidden_size"] = config["hidden_size"]?.DeepClone(),
                    ["num_attention_heads"] = config["num_attention_heads"]?.DeepClone(),
                    ["num_key_value_heads"] = config["num_key_value_heads"]?.DeepClone(),
                    ["vocab_size"] = config["vocab_size"]?.DeepClone(),
                    ["torch_dtype"] = config["torch_dtype"]?.DeepClone(),
                    ["quantization_config"] = config["quantization_config"]?.DeepClone(),
                };
            }
            o["files"] = new JsonArray(Directory.GetFiles(path).Select(f => (JsonNode)new JsonObject { ["name"] = Path.GetFileName(f), ["bytes"] = new FileInfo(f).Length }).ToArray());
            using var st = SafetensorsFile.OpenDirectory(path);
            return Safetensors(st, o);
        }
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such file or directory");
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            using var st = SafetensorsFile.Open(path);
            return Safetensors(st, new JsonObject { ["path"] = Path.GetFullPath(path) });
        }
        if (path.EndsWith(".json", StringComparison.OrdinalIgnoreCase))
        {
            using var st = SafetensorsFile.OpenIndex(path);
            return Safetensors(st, new JsonObject { ["path"] = Path.GetFullPath(path) });
        }
        return Llama2c(path);
    }

    private static unsafe JsonObject Safetensors(SafetensorsFile st, JsonObject o)
    {
        o["format"] = "safetensors";
        var tensors = new JsonArray();
        var byDtype = new SortedDictionary<string, long>(StringComparer.Ordinal);
        var quantized = new JsonArray();
        var bnbKeys = new HashSet<string>(StringComparer.Ordinal);
        long bytes = 0, dense = 0;
        foreach (var t in st.Tensors)
        {
            int marker = t.Name.IndexOf(".weight.quant_state.bitsandbytes__", StringComparison.Ordinal);
            if (marker < 0) continue;
            string prefix = t.Name[..(marker + 1)];
            var raw = st.ReadBytes(t);
            QLoraBnbQuantState qs;
            fixed (byte* p = raw)
            {
                var view = new QLoraView { Data = p, Dtype = QLoraDtype.U8, Device = QLoraConstants.DeviceHost, Rows = 1, Cols = raw.Length };
                var status = NativeMethods.qlora_bnb_parse_quant_state(&view, &qs);
                if (status != QLoraStatus.Ok)
                {
                    string msg = System.Runtime.InteropServices.Marshal.PtrToStringUTF8((nint)NativeMethods.qlora_last_error()) ?? "";
                    throw new InvalidDataException($"{t.Path}: \"{t.Name}\": {msg}");
                }
            }
            long groupBytes = 0;
            foreach (var g in st.Tensors.Where(x => x.Name.StartsWith(prefix + "weight", StringComparison.Ordinal)))
            {
                groupBytes += g.ByteCount;
                bnbKeys.Add(g.Name);
            }
            long n = qs.Rows * qs.Cols;
            quantized.Add(new JsonObject
            {
                ["module"] = prefix.TrimEnd('.'),
                ["quant_type"] = qs.QuantType == QLoraQuantType.Nf4 ? "nf4" : qs.QuantType == QLoraQuantType.Fp4 ? "fp4" : qs.QuantType.ToString(),
                ["blocksize"] = qs.Blocksize,
                ["double_quant"] = qs.DoubleQuant != 0,
                ["shape"] = new JsonArray(qs.Rows, qs.Cols),
                ["dtype"] = Dtypes.SafetensorsName(qs.Dtype),
                ["params"] = n,
                ["bytes"] = groupBytes,
                ["bits_per_param"] = Math.Round(groupBytes * 8.0 / n, 4),
            });
        }
        long quantParams = quantized.Sum(q => q!["params"]!.GetValue<long>());
        foreach (var t in st.Tensors)
        {
            bytes += t.ByteCount;
            byDtype[t.DtypeName] = byDtype.GetValueOrDefault(t.DtypeName) + t.ByteCount;
            if (!bnbKeys.Contains(t.Name) && t.Dtype is QLoraDtype.F32 or QLoraDtype.F16 or QLoraDtype.Bf16 or QLoraDtype.F64) dense += t.ElementCount;
            tensors.Add(new JsonObject
            {
                ["name"] = t.Name,
                ["dtype"] = t.DtypeName,
                ["shape"] = new JsonArray(t.Shape.Select(d => (JsonNode)d).ToArray()),
                ["bytes"] = t.ByteCount,
                ["file"] = Path.GetFileName(t.Path),
            });
        }
        o["tensors"] = tensors;
        o["tensor_count"] = st.Tensors.Count;
        o["bytes"] = bytes;
        o["params"] = dense + quantParams;
        o["quantized"] = quantized;
        o["quantized_params"] = quantParams;
        o["bytes_by_dtype"] = new JsonObject(byDtype.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value)));
        o["metadata"] = new JsonObject(st.Metadata.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value)));
        return o;
    }

    private static JsonObject Llama2c(string path)
    {
        string modelError;
        try
        {
            using var m = Llama2cModelFile.Open(path);
            var c = m.Config;
            int kv = c.Dim / c.Heads * c.KvHeads;
            var arrays = new (string Name, long[] Shape)[]
            {
                ("token_embedding", [c.VocabSize, c.Dim]), ("rms_att", [c.Layers, c.Dim]), ("wq", [c.Layers, c.Dim, c.Dim]),
                ("wk", [c.Layers, kv, c.Dim]), ("wv", [c.Layers, kv, c.Dim]), ("wo", [c.Layers, c.Dim, c.Dim]), ("rms_ffn", [c.Layers, c.Dim]),
                ("w1", [c.Layers, c.HiddenDim, c.Dim]), ("w2", [c.Layers, c.Dim, c.HiddenDim]), ("w3", [c.Layers, c.HiddenDim, c.Dim]),
                ("rms_final", [c.Dim]),
            };
            var list = arrays.ToList();
            if (!c.SharedClassifier) list.Add(("wcls", [c.VocabSize, c.Dim]));
            var tensors = new JsonArray();
            long p = 0;
            foreach (var (name, shape) in list)
            {
                long n = shape.Aggregate(1L, (a, b) => a * b);
                p += n;
                tensors.Add(new JsonObject { ["name"] = name, ["dtype"] = "F32", ["shape"] = new JsonArray(shape.Select(d => (JsonNode)d).ToArray()), ["bytes"] = n * 4 });
            }
            return new JsonObject
            {
                ["path"] = Path.GetFullPath(path),
                ["format"] = "llama2c",
                ["config"] = new JsonObject
                {
                    ["dim"] = c.Dim, ["hidden_dim"] = c.HiddenDim, ["n_layers"] = c.Layers, ["n_heads"] = c.Heads, ["n_kv_heads"] = c.KvHeads,
                    ["vocab_size"] = c.VocabSize, ["seq_len"] = c.SeqLen, ["shared_classifier"] = c.SharedClassifier,
                },
                ["tensors"] = tensors,
                ["tensor_count"] = tensors.Count,
                ["params"] = p,
                ["bytes"] = new FileInfo(path).Length,
            };
        }
        catch (QLoraException e)
        {
            modelError = e.NativeMessage;
        }
        try
        {
            var tokens = Llama2cTokenizerFile.Read(path);
            var special = new JsonArray(tokens.Take(3).Select(t => (JsonNode)System.Text.Encoding.UTF8.GetString(t.Bytes).Trim()).ToArray());
            return new JsonObject
            {
                ["path"] = Path.GetFullPath(path),
                ["format"] = "llama2c-tokenizer",
                ["vocab_size"] = tokens.Count,
                ["special"] = special,
                ["tensors"] = new JsonArray(),
                ["bytes"] = new FileInfo(path).Length,
            };
        }
        catch (QLoraException e)
        {
            throw new InvalidDataException(
                $"{path}: not a safetensors file (no .safetensors extension), a llama2.c model ({modelError}) or a llama2.c tokenizer ({e.NativeMessage})");
        }
    }
}
