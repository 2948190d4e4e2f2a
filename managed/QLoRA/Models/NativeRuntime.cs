using QLoRA.Native;
using QLoRA.Native.Interop;

using TorchSharp;

namespace QLoRA.Models;

/// <summary>
/// The one native context (thread pool) that every model in the process uses for its 4-bit work (quantizing
/// while loading, the fused matmuls of <see cref="Linear4bit"/>), created on first use, plus a single-threaded
/// twin for products too small to be worth waking the pool (<see cref="SingleThreadWork"/>).
/// </summary>
/// <remarks>
/// <para>Thread budget. libtorch's intra-op pool and the native core's pool each get one thread per core:
/// they never run at the same time, because every native call and every torch op is synchronous on the
/// calling thread — a forward pass alternates between torch ops (embedding, norms, attention) and native
/// matmuls (the linear layers). What could make them fight is idle threads that spin: the native pool's
/// workers spin for a few microseconds after a call and then sleep (an atomic wait), and <see cref="TorchRuntime.EnsureLoaded"/> sets
/// <c>OMP_WAIT_POLICY=PASSIVE</c> before libtorch starts so OpenMP's idle workers sleep too. Giving either
/// pool fewer threads would leave cores idle during its phase.</para>
/// <para>The native context is not for concurrent use: the model runs on one thread at a time (as torch's
/// autograd does on CPU: backward runs on the thread that calls <c>backward()</c>). <see cref="Gate"/> serializes
/// native calls if several threads share models anyway.</para>
/// </remarks>
public static class NativeRuntime
{
    private static readonly object s_lock = new();
    private static QLoraContext? s_context;
    private static int s_threads;

    /// <summary>Serializes calls on <see cref="Context"/>.</summary>
    public static object Gate { get; } = new();

    /// <summary>
    /// Sets the native thread count before the context exists (0 = one per core, the default; the environment
    /// variable QLORA_NUM_THREADS also sets it). Returns false if the context was already created.
    /// </summary>
    public static bool Configure(int threads)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(threads);
        lock (s_lock)
        {
            if (s_context is not null) return false;
            s_threads = threads;
            return true;
        }
    }

    private static QLoraContext? s_single;

    /// <summary>
    /// Work (multiply-adds) below which a 4-bit matmul runs on <see cref="SingleThreadContext"/>: waking the
    /// pool's workers costs more than such a small product (a decode step's matrix-vector products on small
    /// models), especially on a busy machine.
    /// </summary>
    public static long SingleThreadWork { get; set; } = 1L << 20;

    /// <summary>A single-threaded CPU context for small products (see <see cref="SingleThreadWork"/>).</summary>
    public static QLoraContext SingleThreadContext
    {
        get
        {
            if (s_single is { } c) return c;
            lock (s_lock)
            {
                s_single ??= QLoraContext.Create(new QLoraContextOptions { Backend = QLoraBackend.Cpu, Threads = 1 });
                return s_single;
            }
        }
    }

    /// <summary>The shared CPU context (SIMD backend, best ISA of this CPU).</summary>
    public static QLoraContext Context
    {
        get
        {
            if (s_context is { } c) return c;
            lock (s_lock)
            {
                if (s_context is not null) return s_context;
                TorchRuntime.EnsureLoaded();
                int threads = s_threads;
                if (threads == 0 && int.TryParse(Environment.GetEnvironmentVariable("QLORA_NUM_THREADS"), out int env) && env > 0)
                    threads = env;
                if (threads == 0) threads = torch.get_num_threads();
                s_context = QLoraContext.Create(new QLoraContextOptions { Backend = QLoraBackend.Cpu, Threads = threads });
                return s_context;
            }
        }
    }
}
