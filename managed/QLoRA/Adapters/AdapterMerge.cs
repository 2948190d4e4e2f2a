using System.Text.Json.Nodes;

using QLoRA.IO;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Native;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Adapters;

/// <summary>How <see cref="AdapterMerge.Write"/> stores the merged linear weights.</summary>
public enum MergedFormat
{
    /// <summary>fp32 safetensors.</summary>
    Fp32,
    /// <summary>bf16 safetensors (round to nearest even).</summary>
    Bf16,
    /// <summary>NF4 with double-quantized scales in bitsandbytes' layout (embeddings, norms and head in fp32).</summary>
    Nf4,
}

/// <summary>What a merge wrote.</summary>
/// <param name="Directory">The output directory.</param>
/// <param name="Tensors">Tensors in model.safetensors (a 4-bit weight counts once).</param>
/// <param name="MergedLayers">Linear layers that had an adapter.</param>
/// <param name="Nf4RelativeError">For NF4 output: ||deq(Q(W')) - W'||_F / ||W'||_F over all merged linear weights W'; else null.</param>
public sealed record MergeResult(string Directory, int Tensors, int MergedLayers, double? Nf4RelativeError);

/// <summary>
/// Merges LoRA adapters into the base weights, W' = W + scale * B A, and writes the result as a Hugging Face
/// model directory (config.json, model.safetensors) in fp32, bf16 or re-quantized NF4. Weights
/// are written in Hugging Face layout: for a model loaded from llama2.c the q_proj/k_proj rows are permuted
/// from adjacent-pair to rotate-half RoPE order (FORMATS.md).
/// </summary>
public static class AdapterMerge
{
    /// <summary>
    /// Writes the merged weights (model.safetensors) and config.json of <paramref name="lora"/>'s model to
    /// <paramref name="outDir"/>; tokenizer files come from <see cref="Checkpoints.CopyTokenizer"/>.
    /// </summary>
    public static MergeResult Write(LoraModel lora, string outDir, MergedFormat format)
    {
        var model = lora.Model;
        var config = model.Config;
        Directory.CreateDirectory(outDir);
        var adapted = lora.Layers.ToDictionary(l => l.Name, l => l.Layer, StringComparer.Ordinal);
        var frozen = model.LinearLayers().ToDictionary(l => l.Name, l => l.Layer, StringComparer.Ordinal);
        ScalarType dense = format == MergedFormat.Bf16 ? ScalarType.BFloat16 : ScalarType.Float32;
        var keep = new List<IDisposable>();
        double errSq = 0, normSq = 0;
        int tensors = 0;
        using var writer = new SafetensorsWriter();
        try
        {
            void AddDense(string key, Tensor t)
            {
                var c = t.detach().to(dense).contiguous();
                keep.Add(c);
                writer.Add(key, TensorViews.RowView(c.dim() == 1 ? c.unsqueeze(0) : c), c.shape, borrow: true, owner: c);
                tensors++;
            }
            void AddLinear(string name)
            {
                using var scope = NewDisposeScope();
                Tensor w = adapted.TryGetValue(name, out var l) ? l.MergedWeight() : frozen[name].DequantizedWeight(ScalarType.Float32);
                w = PeftAdapter.ToHuggingFaceRows(name, w, config).contiguous();
                if (format != MergedFormat.Nf4)
                {
                    w.MoveToOuterDisposeScope();
                    keep.Add(w);
                    AddDense(name + ".weight", w);
                    return;
                }
                var span = TensorViews.Span<float>(w);
                var q = Q4Tensor.Quantize(NativeRuntime.Context, span, w.shape[0], w.shape[1], QuantSpec.Nf4.ToParams());
                keep.Add(q);
                var back = new float[span.Length];
                q.Dequantize(NativeRuntime.Context, back);
                for (int i = 0; i < back.Length; i++)
                {
                    double d = back[i] - span[i];
                    errSq += d * d;
                    normSq += (double)span[i] * span[i];
                }
                writer.AddQ4(name + ".", q);
                tensors++;
            }

            AddDense("model.embed_tokens.weight", model.Model.EmbedTokens.Weight);
            for (int i = 0; i < config.NumLayers; i++)
            {
                var layer = model.Model.Layers[i];
                string p = $"model.layers.{i}.";
                AddDense(p + "input_layernorm.weight", layer.InputLayerNorm.Weight);
                foreach (string s in new[] { "q_proj", "k_proj", "v_proj", "o_proj" }) AddLinear(p + "self_attn." + s);
                AddDense(p + "post_attention_layernorm.weight", layer.PostAttentionLayerNorm.Weight);
                foreach (string s in new[] { "gate_proj", "up_proj", "down_proj" }) AddLinear(p + "mlp." + s);
            }
            AddDense("model.norm.weight", model.Model.Norm.Weight);
            if (!config.TieWordEmbeddings) AddDense("lm_head.weight", model.LmHead.Weight);
            writer.SetMetadata("format", "pt");
            writer.Write(Path.Combine(outDir, "model.safetensors"));
        }
        finally
        {
            foreach (var d in keep) d.Dispose();
        }

        var cfg = (config with { TorchDtype = dense == ScalarType.BFloat16 ? "bfloat16" : "float32", RopeStyle = RopeStyle.Half }).ToHuggingFaceJson();
        if (format == MergedFormat.Nf4)
            cfg["quantization_config"] = new JsonObject
            {
                ["quant_method"] = "bitsandbytes",
                ["load_in_4bit"] = true,
                ["load_in_8bit"] = false,
                ["bnb_4bit_quant_type"] = "nf4",
                ["bnb_4bit_use_double_quant"] = true,
                ["bnb_4bit_compute_dtype"] = "float32",
                ["bnb_4bit_quant_storage"] = "uint8",
            };
        Checkpoints.WriteJson(Path.Combine(outDir, "config.json"), cfg);
        return new MergeResult(outDir, tensors, adapted.Count, format == MergedFormat.Nf4 ? Math.Sqrt(errSq / Math.Max(normSq, double.Epsilon)) : null);
    }
}
