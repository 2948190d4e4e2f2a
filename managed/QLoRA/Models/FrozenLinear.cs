using QLoRA.IO;
using QLoRA.Native;
using QLoRA.Native.Interop;

using TorchSharp;
using TorchSharp.Modules;

using static TorchSharp.torch;

namespace QLoRA.Models;

/// <summary>
/// A linear layer y = x W^T whose weight W [out, in] is frozen (no bias: LLaMA has none): either a 16/32-bit
/// tensor (<see cref="DenseLinear"/>) or a native 4-bit tensor (<see cref="Linear4bit"/>). LoRA wraps these.
/// </summary>
public abstract class FrozenLinear : nn.Module<Tensor, Tensor>
{
    /// <summary>Creates the module.</summary>
    protected FrozenLinear(string name, long inFeatures, long outFeatures) : base(name)
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
    }

    /// <summary>in_features (K).</summary>
    public long InFeatures { get; }

    /// <summary>out_features (N).</summary>
    public long OutFeatures { get; }

    /// <summary>How the weight is stored: "fp32", "bf16", "nf4", "nf4+dq", "fp4+dq", "int4", ...</summary>
    public abstract string Format { get; }

    /// <summary>Bytes the weight occupies (including block scales for 4-bit).</summary>
    public abstract long StorageBytes { get; }

    /// <summary>The weight as a new dense tensor [out, in] of <paramref name="dtype"/> (4-bit: dequantized).</summary>
    public abstract Tensor DequantizedWeight(ScalarType dtype = ScalarType.Float32);
}

/// <summary>A frozen 16/32-bit linear layer (<c>--quant none</c>): <c>F.linear(x, W)</c> with W not requiring grad.</summary>
public sealed class DenseLinear : FrozenLinear
{
    private readonly Parameter weight;

    /// <summary>Wraps <paramref name="weight"/> [out, in] (taken over, not copied; its grad is switched off).</summary>
    public DenseLinear(Tensor weight) : base(nameof(DenseLinear), weight.shape[1], weight.shape[0])
    {
        if (weight.dim() != 2) throw new ArgumentException($"a linear weight must be 2-D, got [{string.Join(", ", weight.shape)}]", nameof(weight));
        this.weight = new Parameter(weight, requires_grad: false);
        RegisterComponents();
    }

    /// <summary>The weight [out, in].</summary>
    public Parameter Weight => weight;

    /// <inheritdoc/>
    public override string Format => weight.dtype switch
    {
        ScalarType.Float32 => "fp32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float16 => "fp16",
        _ => weight.dtype.ToString(),
    };

    /// <inheritdoc/>
    public override long StorageBytes => weight.numel() * weight.element_size();

    /// <inheritdoc/>
    public override Tensor forward(Tensor input) =>
        nn.functional.linear(input.dtype == weight.dtype ? input : input.to(weight.dtype), weight);

    /// <inheritdoc/>
    public override Tensor DequantizedWeight(ScalarType dtype = ScalarType.Float32)
    {
        using var _ = no_grad();
        return weight.detach().to(dtype).clone();
    }
}

/// <summary>
/// A frozen linear layer whose weight is a native 4-bit tensor (NF4/FP4/Int4, optionally double-quantized
/// scales). Forward (Y = X W^T) and backward (dX = dY W) are the native fused kernels, run in place on the
/// tensors' memory inside a custom autograd function; the weight never exists in 16/32-bit and gets no gradient.
/// Activations may be fp32 or bf16 (bf16 in, bf16 out).
/// </summary>
public sealed class Linear4bit : FrozenLinear
{
    /// <summary>Takes ownership of <paramref name="weight"/> (disposed with the module).</summary>
    public Linear4bit(Q4Tensor weight, QLoraContext? context = null)
        : base(nameof(Linear4bit), weight.Cols, weight.Rows)
    {
        Weight = weight;
        Context = context ?? NativeRuntime.Context;
        RegisterComponents();
    }

    /// <summary>The 4-bit weight [out, in].</summary>
    public Q4Tensor Weight { get; }

    /// <summary>The native context the kernels run on.</summary>
    public QLoraContext Context { get; }

    /// <summary>
    /// Inference only: lets the forward product of up to 8 rows (a decode step) round the activations to 8 bits
    /// per 32 elements, as llama.cpp does (<c>qlora_matmul_params.int8_x</c>; docs/kernels.md "8-bit activations").
    /// Faster on CPUs with AVX512-VNNI (elsewhere it changes nothing); the result is approximate. Ignored when a
    /// gradient flows through the layer. Default off.
    /// </summary>
    public bool Int8Activations { get; set; }

    /// <inheritdoc/>
    public override string Format => FormatOf(Weight.Info.Params);

    /// <summary>"nf4", "nf4+dq", "fp4+dq", "int4", ...</summary>
    public static string FormatOf(QuantParams p) =>
        (p.QuantType switch { QLoraQuantType.Nf4 => "nf4", QLoraQuantType.Fp4 => "fp4", QLoraQuantType.Int4 => "int4", _ => p.QuantType.ToString() })
        + (p.DoubleQuant ? "+dq" : "");

    /// <inheritdoc/>
    public override long StorageBytes => Weight.Info.StorageBytes;

    /// <inheritdoc/>
    public override Tensor forward(Tensor input) =>
        // Without a gradient to propagate (inference, or an input that needs none: W is frozen) the kernel runs
        // directly, skipping the autograd node's setup.
        is_grad_enabled() && input.requires_grad
            ? Q4MatmulFunction.apply(input, Weight, Context)
            : Q4MatmulFunction.Run(Context, input, Weight, QLoraMatmulOp.Forward, Weight.Cols, Weight.Rows, Int8Activations);

    /// <inheritdoc/>
    public override Tensor DequantizedWeight(ScalarType dtype = ScalarType.Float32)
    {
        var w = empty([OutFeatures, InFeatures], ScalarType.Float32);
        lock (NativeRuntime.Gate)
            Weight.Dequantize(Context, TensorViews.Span<float>(w));
        if (dtype == ScalarType.Float32) return w;
        using (w) return w.to(dtype);
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        if (disposing) Weight.Dispose();
        base.Dispose(disposing);
    }
}

/// <summary>
/// The autograd function of <see cref="Linear4bit"/>: forward Y = X W^T (QLORA_MATMUL_FORWARD), backward
/// dX = dY W (QLORA_MATMUL_BACKWARD) and no gradient for W. Arguments of <c>apply</c>: (Tensor x, Q4Tensor w, QLoraContext ctx).
/// </summary>
public sealed class Q4MatmulFunction : autograd.SingleTensorFunction<Q4MatmulFunction>
{
    /// <inheritdoc/>
    public override string Name => "Q4Matmul";

    /// <inheritdoc/>
    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var w = (Q4Tensor)vars[1];
        var context = (QLoraContext)vars[2];
        ctx.save_data("w", w);
        ctx.save_data("ctx", context);
        return Run(context, x, w, QLoraMatmulOp.Forward, w.Cols, w.Rows);
    }

    /// <inheritdoc/>
    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad_output)
    {
        var w = (Q4Tensor)ctx.get_data("w");
        var context = (QLoraContext)ctx.get_data("ctx");
        Tensor dx = Run(context, grad_output, w, QLoraMatmulOp.Backward, w.Rows, w.Cols);
        return [dx, null!, null!];
    }

    /// <summary>
    /// y[..., outCols] = op(x[..., inCols], W), on x's memory where its layout allows (else on a contiguous copy).
    /// <paramref name="int8Activations"/>: see <see cref="Linear4bit.Int8Activations"/>.
    /// </summary>
    public static unsafe Tensor Run(QLoraContext context, Tensor x, Q4Tensor w, QLoraMatmulOp op, long inCols, long outCols,
                                    bool int8Activations = false)
    {
        if (x.device_type != DeviceType.CPU)
            throw new NotSupportedException($"Linear4bit runs on CPU tensors here; got a {x.device_type} tensor");
        if (x.dtype is not (ScalarType.Float32 or ScalarType.BFloat16))
            throw new ArgumentException($"Linear4bit needs float32 or bfloat16 activations, got {x.dtype}");
        long[] shape = x.shape;
        if (shape.Length == 0 || shape[^1] != inCols)
            throw new ArgumentException($"Linear4bit [{w.Rows}, {w.Cols}] ({(op == QLoraMatmulOp.Forward ? "forward" : "backward")}) expects the last dimension {inCols}, got [{string.Join(", ", shape)}]");
        long rows = 1;
        for (int i = 0; i < shape.Length - 1; i++) rows *= shape[i];
        var outShape = (long[])shape.Clone();
        outShape[^1] = outCols;
        var y = empty(outShape, x.dtype);
        if (rows == 0) return y;
        Tensor src = TensorViews.IsRowView(x) ? x : x.contiguous();
        try
        {
            QLoraView xv = TensorViews.RowView(src);
            QLoraView yv = TensorViews.RowView(y);
            QLoraMatmulParams p = NativeMethods.qlora_matmul_default_params();
            p.Op = op;
            p.Int8X = int8Activations ? 1 : 0;
            // Small products (decode steps of small models) skip the thread pool's wake-up.
            if (ReferenceEquals(context, NativeRuntime.Context) && rows * inCols * outCols < NativeRuntime.SingleThreadWork)
                context = NativeRuntime.SingleThreadContext;
            lock (NativeRuntime.Gate)
            {
                using var c = context.Handle.Lease();
                using var t = w.Handle.Lease();
                QLoraException.ThrowIfFailed(NativeMethods.qlora_q4_matmul(c.Value, &xv, t.Value, &yv, &p));
            }
        }
        finally
        {
            if (!ReferenceEquals(src, x)) src.Dispose();
        }
        return y;
    }
}

/// <summary>Native views of torch tensors' memory (CPU, no copies).</summary>
public static unsafe class TensorViews
{
    private static delegate* unmanaged<IntPtr, IntPtr> s_data;

    /// <summary>
    /// Address of a CPU tensor's first element (its storage offset included), as libtorch's
    /// <c>Tensor::data_ptr()</c> gives it (TorchSharp 0.107 exposes it only through its native library).
    /// </summary>
    public static IntPtr DataPointer(Tensor t)
    {
        if (s_data is null)
        {
            var info = TorchRuntime.EnsureLoaded();
            IntPtr lib = info.NativeLibraryPath is { } path ? System.Runtime.InteropServices.NativeLibrary.Load(path)
                : System.Runtime.InteropServices.NativeLibrary.Load("LibTorchSharp", typeof(torch).Assembly, null);
            s_data = (delegate* unmanaged<IntPtr, IntPtr>)System.Runtime.InteropServices.NativeLibrary.GetExport(lib, "THSTensor_data");
        }
        if (t.numel() == 0) return IntPtr.Zero;
        IntPtr p = s_data(t.Handle);
        if (p == IntPtr.Zero) throw new InvalidOperationException($"libtorch gave no data pointer for a {t.dtype} tensor on {t.device}");
        return p;
    }

    /// <summary>The native dtype of a torch dtype (F32, BF16, F16, U8, I32, I64, F64).</summary>
    public static QLoraDtype DtypeOf(ScalarType t) => t switch
    {
        ScalarType.Float32 => QLoraDtype.F32,
        ScalarType.BFloat16 => QLoraDtype.Bf16,
        ScalarType.Float16 => QLoraDtype.F16,
        ScalarType.Byte => QLoraDtype.U8,
        ScalarType.Int32 => QLoraDtype.I32,
        ScalarType.Int64 => QLoraDtype.I64,
        ScalarType.Float64 => QLoraDtype.F64,
        ScalarType.Int8 => QLoraDtype.I8,
        ScalarType.Int16 => QLoraDtype.I16,
        ScalarType.Bool => QLoraDtype.Bool,
        _ => throw new NotSupportedException($"no native dtype for {t}"),
    };

    /// <summary>The torch dtype of a native dtype.</summary>
    public static ScalarType ScalarTypeOf(QLoraDtype t) => t switch
    {
        QLoraDtype.F32 => ScalarType.Float32,
        QLoraDtype.Bf16 => ScalarType.BFloat16,
        QLoraDtype.F16 => ScalarType.Float16,
        QLoraDtype.U8 => ScalarType.Byte,
        QLoraDtype.I32 => ScalarType.Int32,
        QLoraDtype.I64 => ScalarType.Int64,
        QLoraDtype.F64 => ScalarType.Float64,
        QLoraDtype.I8 => ScalarType.Int8,
        QLoraDtype.I16 => ScalarType.Int16,
        QLoraDtype.Bool => ScalarType.Bool,
        _ => throw new NotSupportedException($"torch has no dtype for {t}"),
    };

    /// <summary>
    /// True when the tensor's elements form rows of the last dimension with unit stride, and the leading
    /// dimensions collapse into one row index with a constant row stride (contiguous tensors, row slices,
    /// column slices of a 2-D tensor, ...).
    /// </summary>
    public static bool IsRowView(Tensor t)
    {
        long[] shape = t.shape;
        long[] stride = t.stride();
        int n = shape.Length;
        if (n == 0) return false;
        if (shape[n - 1] > 1 && stride[n - 1] != 1) return false;
        if (n >= 2 && stride[n - 2] < shape[n - 1] && shape[n - 2] > 1) return false;
        for (int i = 0; i < n - 2; i++)
            if (shape[i] > 1 && stride[i] != stride[i + 1] * shape[i + 1]) return false;
        return true;
    }

    /// <summary>A 2-D view [rows = product of the leading dims, cols = the last dim] of a tensor for which <see cref="IsRowView"/> holds.</summary>
    public static QLoraView RowView(Tensor t)
    {
        if (!IsRowView(t)) throw new ArgumentException($"tensor [{string.Join(", ", t.shape)}] with strides [{string.Join(", ", t.stride())}] is not a row view");
        long[] shape = t.shape;
        long cols = shape[^1];
        long rows = 1;
        for (int i = 0; i < shape.Length - 1; i++) rows *= shape[i];
        long stride = shape.Length >= 2 && shape[^2] > 1 ? t.stride(-2) : cols;
        return new QLoraView
        {
            Data = (void*)DataPointer(t),
            Dtype = DtypeOf(t.dtype),
            Device = QLoraConstants.DeviceHost,
            Rows = rows,
            Cols = cols,
            Stride = stride == cols ? 0 : stride,
        };
    }

    /// <summary>A span over a contiguous CPU tensor's elements (valid while the tensor lives).</summary>
    public static Span<T> Span<T>(Tensor t) where T : unmanaged
    {
        if (!t.is_contiguous()) throw new ArgumentException("the tensor is not contiguous");
        if (t.element_size() != sizeof(T)) throw new ArgumentException($"{t.dtype} elements are {t.element_size()} bytes, {typeof(T).Name} is {sizeof(T)}");
        return new Span<T>((void*)DataPointer(t), checked((int)t.numel()));
    }

    /// <summary>
    /// A new tensor of <paramref name="dtype"/> with the contents of a native host view (e.g. a memory-mapped
    /// checkpoint tensor), converted from the view's dtype. The view's memory is read, never kept.
    /// </summary>
    public static Tensor FromView(QLoraView view, long[] shape, ScalarType dtype)
    {
        long count = 1;
        foreach (long d in shape) count *= d;
        if (count != view.Rows * view.Cols)
            throw new ArgumentException($"shape [{string.Join(", ", shape)}] has {count} elements, the view {view.Rows} x {view.Cols}");
        ScalarType src = ScalarTypeOf(view.Dtype);
        var raw = empty(shape, src);
        long rowBytes = view.Cols * Dtypes.Size(view.Dtype);
        long stride = (view.Stride == 0 ? view.Cols : view.Stride) * Dtypes.Size(view.Dtype);
        byte* dst = (byte*)DataPointer(raw);
        byte* from = (byte*)view.Data;
        if (stride == rowBytes)
            Buffer.MemoryCopy(from, dst, rowBytes * view.Rows, rowBytes * view.Rows);
        else
            for (long r = 0; r < view.Rows; r++)
                Buffer.MemoryCopy(from + r * stride, dst + r * rowBytes, rowBytes, rowBytes);
        if (src == dtype) return raw;
        using (raw) return raw.to(dtype);
    }
}
