using QLoRA.Models;

using TorchSharp;
using TorchSharp.Modules;

using static TorchSharp.torch;

namespace QLoRA.Training;

/// <summary>
/// Gradient checkpointing for the decoder layers (TorchSharp has no torch.utils.checkpoint): each layer runs its
/// forward without keeping activations, saving only its input; backward runs the layer's forward again with
/// autograd on and back-propagates through that recomputation (PyTorch's reentrant checkpoint). Activation
/// memory falls from every intermediate of every layer to one input per layer plus one layer's intermediates.
/// </summary>
/// <remarks>
/// The default CPU generator's state is saved before the forward and restored around the recomputation, so
/// dropout draws the same masks twice and the gradients equal the non-checkpointed ones. The layer's trainable
/// parameters are passed to the autograd function as inputs, so that the graph reaches the first layer even
/// when its input (the frozen embedding's output) needs no gradient; their gradients are accumulated by the
/// inner backward, and the function returns none for them.
/// </remarks>
public static class GradientCheckpointing
{
    /// <summary>Turns checkpointing on or off for every decoder layer of <paramref name="model"/>.</summary>
    public static void Enable(LlamaForCausalLM model, bool enabled = true) =>
        model.Model.LayerRunner = enabled ? Run : null;

    /// <summary>True when checkpointing is on.</summary>
    public static bool IsEnabled(LlamaForCausalLM model) => model.Model.LayerRunner is not null;

    /// <summary>The layer runner: checkpointed while autograd records, a plain call otherwise (evaluation, generation).</summary>
    public static Tensor Run(LlamaDecoderLayer layer, Tensor x, LayerInputs inputs)
    {
        if (!is_grad_enabled()) return layer.call(x, inputs);
        var trainable = layer.parameters().Where(p => p.requires_grad).Cast<Tensor>().ToArray();
        if (trainable.Length == 0 && !x.requires_grad) return layer.call(x, inputs);
        object[] vars = new object[3 + trainable.Length];
        vars[0] = x;
        vars[1] = layer;
        vars[2] = inputs;
        trainable.CopyTo(vars, 3);
        return CheckpointFunction.apply(vars);
    }

    /// <summary>The autograd function: (x, layer, inputs, trainable parameters...) → layer(x, inputs).</summary>
    public sealed class CheckpointFunction : autograd.SingleTensorFunction<CheckpointFunction>
    {
        /// <inheritdoc/>
        public override string Name => "CheckpointedDecoderLayer";

        /// <inheritdoc/>
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var layer = (LlamaDecoderLayer)vars[1];
            var inputs = (LayerInputs)vars[2];
            ctx.save_for_backward([x]);
            ctx.save_data("layer", layer);
            ctx.save_data("inputs", inputs);
            ctx.save_data("n", vars.Length);
            var rng = get_rng_state();
            rng.DetachFromDisposeScope();
            ctx.save_data("rng", new RngState(rng));
            return layer.call(x, inputs);   // autograd is off here (TorchSharp's apply): nothing is kept
        }

        /// <inheritdoc/>
        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
        {
            var x = ctx.get_saved_variables()[0];
            var layer = (LlamaDecoderLayer)ctx.get_data("layer");
            var inputs = (LayerInputs)ctx.get_data("inputs");
            int n = (int)ctx.get_data("n");
            using var rng = (RngState)ctx.get_data("rng");
            Tensor dx;
            using (var scope = NewDisposeScope())
            {
                var outer = get_rng_state();
                set_rng_state(rng.State);
                try
                {
                    using var grad = enable_grad();
                    var xd = x.detach().requires_grad_(x.requires_grad);
                    var y = layer.call(xd, inputs);
                    y.backward([grad_output]);
                    dx = x.requires_grad && xd.grad is { } g ? g.detach().clone().MoveToOuterDisposeScope() : null!;
                }
                finally
                {
                    set_rng_state(outer);
                }
            }
            var result = new List<Tensor>(n) { dx };
            for (int i = 1; i < n; i++) result.Add(null!);
            return result;
        }
    }

    // A tensor held in the autograd context's data dictionary (which warns on raw tensors), freed after backward.
    private sealed class RngState(Tensor state) : IDisposable
    {
        public Tensor State { get; } = state;

        public void Dispose() => State.Dispose();
    }
}
