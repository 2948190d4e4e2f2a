using System.Runtime.InteropServices;

using QLoRA.Native;
using QLoRA.Native.Interop;

using TorchSharp;
using TorchSharp.Modules;

using static TorchSharp.torch;

namespace QLoRA.Training;

/// <summary>Hyper-parameters of <see cref="PagedAdamW"/> (defaults: the QLoRA paper's, lr aside).</summary>
public sealed record PagedAdamWOptions
{
    /// <summary>Learning rate (a schedule changes it through <see cref="PagedAdamW.LearningRate"/>).</summary>
    public float LearningRate { get; init; } = 2e-4f;

    /// <summary>beta1.</summary>
    public float Beta1 { get; init; } = 0.9f;

    /// <summary>beta2 (the paper uses 0.999).</summary>
    public float Beta2 { get; init; } = 0.999f;

    /// <summary>epsilon.</summary>
    public float Eps { get; init; } = 1e-8f;

    /// <summary>Decoupled weight decay (the paper: 0).</summary>
    public float WeightDecay { get; init; }

    /// <summary>Global-norm gradient clipping threshold (the paper: 0.3); 0 disables clipping.</summary>
    public float MaxGradNorm { get; init; } = 0.3f;

    /// <summary>8-bit blockwise states (bitsandbytes' 8-bit AdamW) instead of 32-bit.</summary>
    public bool EightBit { get; init; }

    /// <summary>Keep the states in a pager with this residency budget (bytes); null = ordinary memory, unpaged.</summary>
    public long? PagerBudgetBytes { get; init; }

    /// <summary>
    /// Pager page size (bytes, a power of two in [4 KiB, 1 GiB]); null = chosen for the buffers
    /// (<see cref="PagedAdamW.ChoosePageBytes"/>: the largest power of two from 1 MiB down to 64 KiB that rounds
    /// the states up by at most 1/8).
    /// </summary>
    public long? PageBytes { get; init; }

    /// <summary>Directory of the pager's spill file (null = $TMPDIR or /tmp).</summary>
    public string? SpillDirectory { get; init; }
}

/// <summary>What one <see cref="PagedAdamW.Step"/> did.</summary>
/// <param name="Step">Steps completed.</param>
/// <param name="GradNorm">Global L2 norm of all gradients before clipping.</param>
/// <param name="ClipScale">Factor the gradients were scaled by (1 when not clipped).</param>
public readonly record struct OptimizerStepInfo(long Step, double GradNorm, float ClipScale);

/// <summary>
/// AdamW over TorchSharp parameters, run by the native core (<c>qlora_adamw_*</c>): 32-bit or 8-bit blockwise
/// states, optionally held by the native pager (<c>qlora_pager_*</c>, a budgeted store that spills to a file),
/// with global-norm clipping computed across all parameters.
/// </summary>
/// <remarks>
/// <para>Zero copy: every <see cref="Step"/> hands the native optimizer views of the parameters' and gradients'
/// own storage (<c>data_ptr()</c>); it updates the parameters in place and only reads the gradients.</para>
/// <para>Pointer stability: the native side registers buffer sizes only, never addresses, and takes fresh views
/// on every step, so storage may move between steps (a gradient re-allocated after set-to-none, a parameter
/// replaced by <c>set_</c>). Within one <see cref="Step"/> call the storage must stay put, which holds because
/// nothing else runs during the call. Parameters and gradients must be contiguous fp32 tensors on the host
/// (a CUDA build of the native core with CUDA tensors would take device views); anything else is refused
/// with a message naming the parameter.</para>
/// </remarks>
public sealed class PagedAdamW : IDisposable
{
    private readonly Parameter[] _params;
    private readonly string[] _names;
    private readonly QLoraAdamwSafeHandle _opt;
    private readonly QLoraPagerSafeHandle? _pager;
    private readonly QLoraContext _context;
    private QLoraAdamwParams _hp;

    /// <summary>The pager's page size in bytes; null when the states are not paged.</summary>
    public long? PageBytes { get; }

    /// <summary>
    /// Page size for buffers of <paramref name="numels"/> elements: each buffer's states take whole pages, so
    /// many small buffers (LoRA A/B of a 125M model: r x 576) waste most of a 1 MiB page each (420 MiB of pages
    /// for 149 MiB of 32-bit states). Returns the largest power of two from 1 MiB down to 64 KiB whose rounding
    /// adds at most 1/8 to the states, else 64 KiB. Smaller pages only cost more page operations when a budget
    /// makes the pager spill.
    /// </summary>
    public static long ChoosePageBytes(IEnumerable<long> numels, bool eightBit)
    {
        // State bytes per element: m and v in fp32, or in 8 bits plus one fp32 absmax each per 256-element block.
        double perElement = eightBit ? 2.0 + 8.0 / 256 : 8.0;
        long[] bytes = numels.Select(n => (long)Math.Ceiling(n * perElement)).ToArray();
        long exact = bytes.Sum();
        for (long page = 1L << 20; page > 64L << 10; page >>= 1)
            if (bytes.Sum(b => (b + page - 1) / page * page) <= exact + exact / 8) return page;
        return 64L << 10;
    }

    /// <summary>Creates the optimizer for <paramref name="parameters"/> (name, parameter) in this order.</summary>
    /// <exception cref="ArgumentException">No parameters, or one that is not a contiguous fp32 tensor.</exception>
    /// <exception cref="QLoraException">The native side refused a value (e.g. a budget smaller than a page).</exception>
    public unsafe PagedAdamW(IReadOnlyList<(string Name, Parameter Parameter)> parameters, PagedAdamWOptions options, QLoraContext context)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(context);
        if (parameters.Count == 0) throw new ArgumentException("no parameters to optimize", nameof(parameters));
        _params = parameters.Select(p => p.Parameter).ToArray();
        _names = parameters.Select(p => p.Name).ToArray();
        for (int i = 0; i < _params.Length; i++) CheckTensor(_params[i], _names[i], "parameter");
        _context = context;
        Options = options;

        _hp = NativeMethods.qlora_adamw_default_params();
        _hp.State = options.EightBit ? QLoraOptimState.State8bit : QLoraOptimState.StateF32;
        _hp.Lr = options.LearningRate;
        _hp.Beta1 = options.Beta1;
        _hp.Beta2 = options.Beta2;
        _hp.Eps = options.Eps;
        _hp.WeightDecay = options.WeightDecay;
        _hp.MaxGradNorm = options.MaxGradNorm;

        _opt = new QLoraAdamwSafeHandle();
        try
        {
            if (options.PagerBudgetBytes is { } budget)
            {
                _pager = new QLoraPagerSafeHandle();
                QLoraPagerParams pp = NativeMethods.qlora_pager_default_params();
                pp.BudgetBytes = budget;
                pp.PageBytes = options.PageBytes ?? ChoosePageBytes(_params.Select(p => p.numel()), options.EightBit);
                PageBytes = pp.PageBytes;
                nint dir = options.SpillDirectory is null ? 0 : Marshal.StringToCoTaskMemUTF8(options.SpillDirectory);
                try
                {
                    pp.SpillDir = (byte*)dir;
                    QLoraPagerHandle raw;
                    QLoraException.ThrowIfFailed(NativeMethods.qlora_pager_create(&pp, &raw));
                    _pager.Attach(raw);
                }
                finally
                {
                    if (dir != 0) Marshal.FreeCoTaskMem(dir);
                }
            }
            QLoraAdamwHandle opt;
            var hp = _hp;
            if (_pager is null)
                QLoraException.ThrowIfFailed(NativeMethods.qlora_adamw_create(&hp, default, &opt));
            else
                using (var pl = _pager.Lease())
                    QLoraException.ThrowIfFailed(NativeMethods.qlora_adamw_create(&hp, pl.Value, &opt));
            _opt.Attach(opt);
            using var l = _opt.Lease();
            foreach (var p in _params)
                QLoraException.ThrowIfFailed(NativeMethods.qlora_adamw_add_buffer(l.Value, p.numel(), null));
        }
        catch
        {
            _opt.Dispose();
            _pager?.Dispose();
            throw;
        }
    }

    /// <summary>The options it was created with.</summary>
    public PagedAdamWOptions Options { get; }

    /// <summary>The parameters, in registration order.</summary>
    public IReadOnlyList<Parameter> Parameters => _params;

    /// <summary>The learning rate of the next step.</summary>
    public unsafe float LearningRate
    {
        get => _hp.Lr;
        set
        {
            if (!(value >= 0) || float.IsInfinity(value)) throw new ArgumentOutOfRangeException(nameof(value), value, "the learning rate must be finite and >= 0");
            if (value == _hp.Lr) return;
            var hp = _hp;
            hp.Lr = value;
            using var l = _opt.Lease();
            QLoraException.ThrowIfFailed(NativeMethods.qlora_adamw_set_params(l.Value, &hp));
            _hp = hp;
        }
    }

    /// <summary>Native state: steps done, state bytes, paged or not.</summary>
    public unsafe QLoraAdamwInfo Info
    {
        get
        {
            QLoraAdamwInfo info;
            using var l = _opt.Lease();
            QLoraException.ThrowIfFailed(NativeMethods.qlora_adamw_get_info(l.Value, &info));
            return info;
        }
    }

    /// <summary>The pager's counters (null when unpaged).</summary>
    public unsafe QLoraPagerStats? PagerStats
    {
        get
        {
            if (_pager is null) return null;
            QLoraPagerStats s;
            using var l = _pager.Lease();
            QLoraException.ThrowIfFailed(NativeMethods.qlora_pager_get_stats(l.Value, &s));
            return s;
        }
    }

    /// <summary>Sets every gradient to zero in place (the storage is kept for the next backward).</summary>
    public void ZeroGrad()
    {
        using var _ = no_grad();
        foreach (var p in _params) p.grad?.zero_();
    }

    /// <summary>
    /// One AdamW step over all parameters with their current gradients (a parameter without a gradient counts as
    /// a zero gradient). Clipping scales the gradients on the fly; they are not modified.
    /// </summary>
    /// <exception cref="QLoraException">A non-finite gradient (named; nothing is changed) or a pager failure.</exception>
    public unsafe OptimizerStepInfo Step()
    {
        int n = _params.Length;
        var pv = new QLoraView[n];
        var gv = new QLoraView[n];
        var zeros = new List<Tensor>();
        try
        {
            for (int i = 0; i < n; i++)
            {
                var p = _params[i];
                CheckTensor(p, _names[i], "parameter");
                Tensor? g = p.grad;
                if (g is null)
                {
                    g = zeros_like(p);
                    zeros.Add(g);
                }
                CheckTensor(g, _names[i], "gradient");
                pv[i] = View(p);
                gv[i] = View(g);
            }
            QLoraAdamwStepInfo info;
            fixed (QLoraView* pp = pv)
            fixed (QLoraView* gp = gv)
            {
                using var c = _context.Handle.Lease();
                using var o = _opt.Lease();
                QLoraException.ThrowIfFailed(NativeMethods.qlora_adamw_step(c.Value, o.Value, pp, gp, n, &info));
            }
            return new OptimizerStepInfo(info.Step, info.GradNorm, info.ClipScale);
        }
        finally
        {
            foreach (var z in zeros) z.Dispose();
        }
    }

    /// <summary>Writes hyper-parameters, step and states to <paramref name="path"/> atomically.</summary>
    public unsafe void Save(string path)
    {
        nint s = Marshal.StringToCoTaskMemUTF8(path);
        try
        {
            using var o = _opt.Lease();
            QLoraException.ThrowIfFailed(NativeMethods.qlora_adamw_save(o.Value, (byte*)s));
        }
        finally
        {
            Marshal.FreeCoTaskMem(s);
        }
    }

    /// <summary>Restores a file written by <see cref="Save"/> (validated first; a refusal changes nothing).</summary>
    public unsafe void Load(string path)
    {
        nint s = Marshal.StringToCoTaskMemUTF8(path);
        try
        {
            using var o = _opt.Lease();
            QLoraException.ThrowIfFailed(NativeMethods.qlora_adamw_load(o.Value, (byte*)s));
            QLoraAdamwParams hp;
            QLoraException.ThrowIfFailed(NativeMethods.qlora_adamw_get_params(o.Value, &hp));
            _hp = hp;
        }
        finally
        {
            Marshal.FreeCoTaskMem(s);
        }
    }

    private static void CheckTensor(Tensor t, string name, string what)
    {
        if (t.dtype != ScalarType.Float32)
            throw new ArgumentException($"PagedAdamW: the {what} of {name} is {t.dtype}; the optimizer works on fp32 master weights");
        if (!t.is_contiguous())
            throw new ArgumentException($"PagedAdamW: the {what} of {name} is not contiguous");
        if (t.device_type != DeviceType.CPU && t.device_type != DeviceType.CUDA)
            throw new ArgumentException($"PagedAdamW: the {what} of {name} is on {t.device_type}");
    }

    private static unsafe QLoraView View(Tensor t) => new()
    {
        Data = (void*)QLoRA.Models.TensorViews.DataPointer(t),
        Dtype = QLoraDtype.F32,
        Device = t.device_type == DeviceType.CUDA ? t.device_index : QLoraConstants.DeviceHost,
        Rows = 1,
        Cols = t.numel(),
        Stride = 0,
    };

    /// <summary>Frees the native optimizer and pager.</summary>
    public void Dispose()
    {
        _opt.Dispose();
        _pager?.Dispose();
    }
}
