using System.Runtime.InteropServices;
using QLoRA.Native.Interop;

namespace QLoRA.Native;

/// <summary>
/// Options of <see cref="QLoraContext.Create"/>. A null property keeps the native default
/// (<c>qlora_context_default_params()</c>: automatic backend, best ISA, all cores, device 0).
/// </summary>
public sealed record QLoraContextOptions
{
    /// <summary>Backend: Ref (scalar oracle), Cpu (SIMD + threads), Cuda, or Auto.</summary>
    public QLoraBackend? Backend { get; init; }

    /// <summary>Highest CPU instruction set the kernels may use; more than the CPU has is an error.</summary>
    public QLoraCpuIsa? MaxIsa { get; init; }

    /// <summary>CPU worker threads including the caller; 0 means all cores.</summary>
    public int? Threads { get; init; }

    /// <summary>CUDA device ordinal (CUDA backend only).</summary>
    public int? Device { get; init; }
}

/// <summary>
/// A native compute context: the backend, the CPU instruction set and the thread pool every
/// operation runs with. Not for concurrent use: give each thread its own context.
/// </summary>
public sealed class QLoraContext : IDisposable
{
    private QLoraContext(QLoraContextSafeHandle handle, QLoraContextInfo info)
    {
        Handle = handle;
        Backend = info.Backend;
        Isa = info.Isa;
        Threads = info.NThreads;
        Device = info.Device;
    }

    /// <summary>The owning native handle, for calls through <see cref="NativeMethods"/> (use <c>Handle.Lease()</c>).</summary>
    public QLoraContextSafeHandle Handle { get; }

    /// <summary>The backend the context resolved to (never Auto).</summary>
    public QLoraBackend Backend { get; }

    /// <summary>The instruction set the CPU kernels use (Scalar for the Ref backend).</summary>
    public QLoraCpuIsa Isa { get; }

    /// <summary>Worker threads, including the caller.</summary>
    public int Threads { get; }

    /// <summary>CUDA device ordinal.</summary>
    public int Device { get; }

    /// <summary>Creates a context.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A negative thread count or device.</exception>
    /// <exception cref="QLoraException">The backend or ISA is not available here (status Unsupported) or a value is invalid.</exception>
    public static unsafe QLoraContext Create(QLoraContextOptions? options = null)
    {
        options ??= new QLoraContextOptions();
        if (options.Threads is < 0)
            throw new ArgumentOutOfRangeException(nameof(options), options.Threads, $"{nameof(options.Threads)} must be >= 0 (0 = all cores)");
        if (options.Device is < 0)
            throw new ArgumentOutOfRangeException(nameof(options), options.Device, $"{nameof(options.Device)} must be >= 0");
        QLoraContextParams p = NativeMethods.qlora_context_default_params();
        if (options.Backend is { } backend) p.Backend = backend;
        if (options.MaxIsa is { } isa) p.MaxIsa = isa;
        if (options.Threads is { } threads) p.NThreads = threads;
        if (options.Device is { } device) p.Device = device;

        var handle = new QLoraContextSafeHandle();
        try
        {
            QLoraContextHandle raw;
            QLoraException.ThrowIfFailed(NativeMethods.qlora_context_create(&p, &raw));
            handle.Attach(raw);
            QLoraContextInfo info;
            using (HandleLease<QLoraContextHandle> lease = handle.Lease())
                QLoraException.ThrowIfFailed(NativeMethods.qlora_context_get_info(lease.Value, &info));
            return new QLoraContext(handle, info);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>The highest instruction set this CPU supports.</summary>
    public static QLoraCpuIsa DetectedIsa => NativeMethods.qlora_cpu_isa_detected();

    /// <summary>The native name of an instruction set ("avx512_bf16", ...).</summary>
    public static unsafe string IsaName(QLoraCpuIsa isa) => Marshal.PtrToStringUTF8((nint)NativeMethods.qlora_cpu_isa_name(isa)) ?? "";

    /// <summary>The native library's version, e.g. "0.1.0".</summary>
    public static unsafe string NativeVersion => Marshal.PtrToStringUTF8((nint)NativeMethods.qlora_version()) ?? "";

    /// <summary>The ABI version the native library was built with (compare with <see cref="QLoraConstants.AbiVersion"/>).</summary>
    public static int NativeAbiVersion => NativeMethods.qlora_abi_version();

    /// <inheritdoc/>
    public override string ToString() => $"QLoraContext({Backend}, {Isa}, {Threads} threads)";

    /// <summary>Frees the native context (deferred while a call that uses it is running).</summary>
    public void Dispose() => Handle.Dispose();
}
