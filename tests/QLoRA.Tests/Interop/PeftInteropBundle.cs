using QLoRA.Adapters;
using QLoRA.IO;
using QLoRA.Lora;
using QLoRA.Models;
using QLoRA.Native.Interop;
using QLoRA.Tests.Training;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Tests.Interop;

/// <summary>
/// The producing half of the cross-check against Hugging Face transformers + PEFT (scripts/interop/check_peft.py,
/// run where Python has them; docs/training.md "Checked against transformers and PEFT"). Writes to
/// $QLORA_INTEROP_OUT a small random LLaMA (GQA, llama2.c rope convention, so the q/k row permutation is
/// exercised) as a Hugging Face directory, a PEFT adapter of ours for it, the merged model, and our logits of
/// both on fixed token ids. Explicit: CI has no transformers, and the assertions are the script's.
/// </summary>
[Explicit("writes the bundle that scripts/interop/check_peft.py checks; set QLORA_INTEROP_OUT")]
[Category("Interop")]
public class PeftInteropBundle
{
    [Test]
    public void WriteBundle()
    {
        string? outDir = Environment.GetEnvironmentVariable("QLORA_INTEROP_OUT");
        Assert.That(outDir, Is.Not.Null.And.Not.Empty, "set QLORA_INTEROP_OUT to the directory to write");
        Directory.CreateDirectory(outDir!);
        TorchRuntime.EnsureLoaded();

        using var model = TinyModels.Build(17, QuantSpec.None, rope: RopeStyle.Adjacent, dim: 64);
        var options = new LoraOptions { Rank = 8, Alpha = 16, Dropout = 0.0, TargetModules = LoraOptions.AllLinear };
        var lora = LoraModel.Inject(model, options, 23);
        // B = 0 as injected: the "merge" is the base model itself, written in Hugging Face layout.
        AdapterMerge.Write(lora, Path.Combine(outDir!, "base"), MergedFormat.Fp32);

        using var ids = tensor(new long[] { 1, 72, 101, 108, 108, 111, 35, 119, 111, 114, 108, 100, 4, 200, 17, 3,
                                      1, 30, 31, 32, 33, 250, 251, 252, 253, 90, 91, 92, 93, 94, 95, 96 }, [2, 16]);
        using Tensor baseLogits = Logits(model, ids);

        using (var gen = new Generator(29UL))
        using (no_grad())
            foreach (var (_, l) in lora.Layers) l.B.copy_(randn(l.B.shape, generator: gen).mul_(0.05f));
        using Tensor loraLogits = Logits(model, ids);
        Assert.That(loraLogits.allclose(baseLogits, 1e-3, 1e-3), Is.False, "the adapter changes the logits");

        PeftAdapter.Save(lora, Path.Combine(outDir!, "adapter"), "base");
        AdapterMerge.Write(lora, Path.Combine(outDir!, "merged"), MergedFormat.Fp32);

        using var writer = new SafetensorsWriter();
        foreach (var (name, t) in new[] { ("ids", ids), ("base", baseLogits), ("lora", loraLogits) })
            writer.Add(name, TensorViews.RowView(t.contiguous()), t.shape, borrow: true, owner: t);
        writer.SetMetadata("format", "pt");
        writer.Write(Path.Combine(outDir!, "logits.safetensors"));
        TestContext.Out.WriteLine($"wrote {outDir}: base/, adapter/, merged/, logits.safetensors ({lora.Layers.Count} adapted layers)");
    }

    private static Tensor Logits(LlamaForCausalLM model, Tensor ids)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        return model.call(ids).to(ScalarType.Float32).contiguous().MoveToOuterDisposeScope();
    }
}
