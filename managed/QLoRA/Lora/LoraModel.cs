using QLoRA.Models;

using TorchSharp;
using TorchSharp.Modules;

using static TorchSharp.torch;

namespace QLoRA.Lora;

/// <summary>
/// LoRA adapters injected into a <see cref="LlamaForCausalLM"/>: each chosen linear layer is replaced (under its
/// Hugging Face name) by a <see cref="LoraLinear"/> that holds the frozen layer. The adapters are the only
/// trainable parameters; everything else stays frozen.
/// </summary>
public sealed class LoraModel
{
    private readonly List<(string Name, LoraLinear Layer)> _layers;

    private LoraModel(LlamaForCausalLM model, LoraOptions options, List<(string, LoraLinear)> layers)
    {
        Model = model;
        Options = options;
        _layers = layers;
    }

    /// <summary>The model (its chosen linear layers now LoRA layers).</summary>
    public LlamaForCausalLM Model { get; }

    /// <summary>The options.</summary>
    public LoraOptions Options { get; }

    /// <summary>The LoRA layers by module name (e.g. "model.layers.0.self_attn.q_proj"), in model order.</summary>
    public IReadOnlyList<(string Name, LoraLinear Layer)> Layers => _layers;

    /// <summary>True when a layer name matches a target entry as PEFT matches target_modules.</summary>
    public static bool Matches(string layerName, IEnumerable<string> targets) =>
        targets.Any(t => layerName == t || layerName.EndsWith("." + t, StringComparison.Ordinal));

    /// <summary>
    /// Replaces the target linear layers of <paramref name="model"/> by LoRA layers. A is drawn from a generator
    /// seeded with <paramref name="seed"/>, layer by layer in model order, so the same seed gives the same adapters.
    /// </summary>
    /// <exception cref="ArgumentException">A target that matches no linear layer (the message lists the names), or a model that already has LoRA layers.</exception>
    public static LoraModel Inject(LlamaForCausalLM model, LoraOptions options, long seed)
    {
        ArgumentNullException.ThrowIfNull(model);
        options.Validate();
        if (model.modules().Any(m => m is LoraLinear))
            throw new ArgumentException("the model already has LoRA layers", nameof(model));
        var linear = model.LinearLayers().ToList();
        var targets = options.TargetModules ?? LoraOptions.AllLinear;
        foreach (string t in targets)
            if (!linear.Any(l => Matches(l.Name, [t])))
                throw new ArgumentException(
                    $"target module \"{t}\" matches no linear layer of the model (its linear layers are named like " +
                    $"{string.Join(", ", linear.Select(l => l.Name.Split('.')[^1]).Distinct())}; full names such as {linear[0].Name})", nameof(options));
        using var gen = new Generator((ulong)seed);
        var layers = new List<(string, LoraLinear)>();
        foreach (var (name, layer) in linear)
        {
            if (!Matches(name, targets)) continue;
            var lora = new LoraLinear(layer, options, gen);
            lora.train(model.training);   // a new module starts in training mode; follow the model's
            model.ReplaceLinear(name, lora);
            layers.Add((name, lora));
        }
        return new LoraModel(model, options, layers);
    }

    /// <summary>Trainable parameters as ("&lt;module&gt;.lora_A", A), ("&lt;module&gt;.lora_B", B), layer by layer.</summary>
    public IReadOnlyList<(string Name, Parameter Parameter)> Parameters()
    {
        var list = new List<(string, Parameter)>(_layers.Count * 2);
        foreach (var (name, layer) in _layers)
        {
            list.Add((name + ".lora_A", layer.A));
            list.Add((name + ".lora_B", layer.B));
        }
        return list;
    }

    /// <summary>Number of trainable (LoRA) parameters.</summary>
    public long TrainableParameterCount => _layers.Sum(l => l.Layer.A.numel() + l.Layer.B.numel());

    /// <summary>
    /// The target_modules entries that describe the adapted layers in PEFT's adapter_config.json: the options'
    /// own list, or (for "all linear layers") the distinct last name parts, in model order.
    /// </summary>
    public IReadOnlyList<string> TargetModuleNames =>
        Options.TargetModules ?? _layers.Select(l => l.Name.Split('.')[^1]).Distinct().ToList();

    /// <summary>Copies every A and B (detached) into new tensors (e.g. to compare or restore later).</summary>
    public Dictionary<string, Tensor> Snapshot()
    {
        using var _ = no_grad();
        return Parameters().ToDictionary(p => p.Name, p => p.Parameter.detach().clone());
    }
}
