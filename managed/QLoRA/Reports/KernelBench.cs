using System.Diagnostics;
using System.Globalization;
using System.Text;

using QLoRA.Models;
using QLoRA.Native;
using QLoRA.Native.Interop;

using TorchSharp;

using static TorchSharp.torch;

namespace QLoRA.Reports;

/// <summary>
/// The kernel suite (<c>qlora bench --suite kernels</c>), measured from C# the way training calls the kernels:
/// the fused 4-bit matmul forward (Y = X W^T) and backward (dX = dY W) through the bindings
/// (<see cref="Q4MatmulFunction.Run"/>, exactly what <see cref="Linear4bit"/> runs, output allocation included) next
/// to what LoRA on a dense base runs for the same product — libtorch's <c>linear</c> (forward) and <c>matmul</c>
/// (backward) on an unquantized fp32 or bf16 W — in the same process, on LLaMA-7B layer shapes, with the native pool
/// and libtorch's pool the same size; plus dequantizing W to bf16 next to a copy of the same bytes, and the weight
/// bandwidth of the M = 1 products next to the machine's read bandwidth measured in the same run.
/// </summary>
public static class KernelBench
{
    /// <summary>LLaMA-7B linear layer shapes (K = in, N = out): q/k/v/o, gate/up, down.</summary>
    public static readonly (long K, long N)[] Shapes = [(4096, 4096), (4096, 11008), (11008, 4096)];

    /// <summary>Rows of X: a decode step, a small batch, a training micro-batch.</summary>
    public static readonly long[] Ms = [1, 16, 512];

    /// <summary>
    /// M = 1 rotates over copies of W spanning at least this many bytes, so W comes from memory, not the cache:
    /// 4x the last-level cache (STREAM's rule), 192 MiB at least.
    /// </summary>
    public static readonly long ColdBytes = Math.Max(192L << 20, 4 * MachineInfo.LastLevelCacheBytes());

    /// <summary>One measured product.</summary>
    /// <param name="Op">"forward" or "backward".</param>
    /// <param name="M">Rows of X.</param>
    /// <param name="K">in_features.</param>
    /// <param name="N">out_features.</param>
    /// <param name="Dtype">Activation dtype ("fp32" or "bf16"); the dense W has the same dtype.</param>
    /// <param name="Q4Seconds">Median seconds of the fused 4-bit product.</param>
    /// <param name="DenseSeconds">Median seconds of libtorch's product with a dense W.</param>
    /// <param name="Q4WeightBytes">Bytes of the 4-bit W (storage_bytes).</param>
    public sealed record Row(string Op, long M, long K, long N, string Dtype, double Q4Seconds, double DenseSeconds, long Q4WeightBytes)
    {
        /// <summary>2 M N K.</summary>
        public double Flops => 2.0 * M * N * K;

        /// <summary>GFLOP/s of the 4-bit product.</summary>
        public double Q4Gflops => Flops / Q4Seconds / 1e9;

        /// <summary>GFLOP/s of the dense product.</summary>
        public double DenseGflops => Flops / DenseSeconds / 1e9;

        /// <summary>Dense time / 4-bit time: the 4-bit product's speed relative to dense (above 1: faster).</summary>
        public double Speed => DenseSeconds / Q4Seconds;

        /// <summary>GB/s over the 4-bit weight bytes.</summary>
        public double Q4WeightGBps => Q4WeightBytes / Q4Seconds / 1e9;
    }

    /// <summary>Dequantizing a whole W to bf16 vs copying the same number of bytes.</summary>
    /// <param name="K">in_features.</param>
    /// <param name="N">out_features.</param>
    /// <param name="DequantSeconds">Median seconds of qlora_q4_dequantize to bf16.</param>
    /// <param name="CopySeconds">Median seconds of copying N K bf16 values (libtorch copy_).</param>
    public sealed record DequantRow(long K, long N, double DequantSeconds, double CopySeconds)
    {
        /// <summary>Output GB/s of the dequantization.</summary>
        public double DequantGBps => 2.0 * N * K / DequantSeconds / 1e9;

        /// <summary>GB/s of the copy (bytes written).</summary>
        public double CopyGBps => 2.0 * N * K / CopySeconds / 1e9;
    }

    /// <summary>Median of <paramref name="reps"/> (at least) timed calls after one untimed call, repeating for at least <paramref name="minSeconds"/>.</summary>
    public static double Time(Action call, int reps = 3, double minSeconds = 0.2, int maxReps = 50)
    {
        call();
        var times = new List<double>();
        var total = Stopwatch.StartNew();
        while (times.Count < reps || (total.Elapsed.TotalSeconds < minSeconds && times.Count < maxReps))
        {
            long t0 = Stopwatch.GetTimestamp();
            call();
            times.Add((Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency);
        }
        return TrainCaseResult.Median(times);
    }

    /// <summary>Runs the suite. <paramref name="quick"/>: one shape (4096 x 11008) and M = 1, 512.</summary>
    public static (List<BenchResult> Results, string Markdown) Run(bool quick = false, Action<string>? log = null)
    {
        TorchRuntime.EnsureLoaded();
        var ctx = NativeRuntime.Context;
        int torchThreads = get_num_threads();
        if (torchThreads != ctx.Threads)
            log?.Invoke($"note: libtorch has {torchThreads} threads, the native pool {ctx.Threads}");
        (long K, long N)[] shapes = quick ? [(4096, 11008)] : Shapes;
        long[] ms = quick ? [1, 512] : Ms;
        var rows = new List<Row>();
        var deq = new List<DequantRow>();
        using var gen = new Generator(7);

        // The machine's read bandwidth, same run: a sum over a buffer far larger than the caches.
        double readGBps;
        using (var big = randn([ColdBytes / 4], generator: gen))
        {
            double s = Time(() => { using var r = big.sum(); }, reps: 5);
            readGBps = ColdBytes / s / 1e9;
        }
        log?.Invoke($"read bandwidth (libtorch sum over {ColdBytes >> 20} MiB, {torchThreads} threads): {readGBps:F1} GB/s");

        foreach (var (k, n) in shapes)
        {
            log?.Invoke($"W [{n}, {k}]: quantizing to NF4+DQ");
            using var w32 = randn([n, k], generator: gen).mul_(0.02f);
            using var w16 = w32.to(ScalarType.BFloat16);
            var q = Q4Tensor.Quantize(ctx, TensorViews.Span<float>(w32), n, k, QuantSpec.Nf4.ToParams());
            long qBytes = q.Info.StorageBytes;
            // Copies for the cold-cache M = 1 products.
            var qCopies = new List<Q4Tensor> { q };
            var parts = q.GetParts();
            while (qCopies.Count * qBytes < ColdBytes) qCopies.Add(Q4Tensor.FromParts(ctx, parts));
            var d32 = new List<Tensor> { w32.alias() };
            while (d32.Count * n * k * 4 < ColdBytes) d32.Add(w32.clone());
            var d16 = new List<Tensor> { w16.alias() };
            while (d16.Count * n * k * 2 < ColdBytes) d16.Add(w16.clone());
            try
            {
                foreach (long m in ms)
                    foreach (string op in new[] { "forward", "backward" })
                        foreach (var dt in new[] { ScalarType.Float32, ScalarType.BFloat16 })
                        {
                            bool fwd = op == "forward";
                            using var x = randn([m, fwd ? k : n], generator: gen).to(dt);
                            var dense = dt == ScalarType.Float32 ? d32 : d16;
                            int rot = m == 1 ? int.MaxValue : 1;
                            int iq = 0, id = 0;
                            var matOp = fwd ? QLoraMatmulOp.Forward : QLoraMatmulOp.Backward;
                            double tq = Time(() =>
                            {
                                var w = qCopies[iq++ % Math.Min(rot, qCopies.Count)];
                                using var y = Q4MatmulFunction.Run(ctx, x, w, matOp, fwd ? k : n, fwd ? n : k);
                            });
                            double td = Time(() =>
                            {
                                var w = dense[id++ % Math.Min(rot, dense.Count)];
                                using var y = fwd ? nn.functional.linear(x, w) : x.matmul(w);
                            });
                            var row = new Row(op, m, k, n, dt == ScalarType.Float32 ? "fp32" : "bf16", tq, td, qBytes);
                            rows.Add(row);
                            log?.Invoke($"{op,-8} M={m,-3} K={k,-5} N={n,-5} {row.Dtype}: 4-bit {tq * 1000,8:F2} ms ({row.Q4Gflops:F1} GFLOP/s), " +
                                        $"dense {td * 1000,8:F2} ms ({row.DenseGflops:F1} GFLOP/s), speed vs dense {row.Speed:F2}x");
                        }

                using var outBf16 = empty([n, k], ScalarType.BFloat16);
                using var copyDst = empty([n, k], ScalarType.BFloat16);
                double tdq = Time(() => q.DequantizeBf16(ctx, TensorViews.Span<ushort>(outBf16)), reps: 5);
                double tcp = Time(() => copyDst.copy_(w16), reps: 5);
                var dr = new DequantRow(k, n, tdq, tcp);
                deq.Add(dr);
                log?.Invoke($"dequantize [{n}, {k}] to bf16: {tdq * 1000:F2} ms ({dr.DequantGBps:F1} GB/s written), copy of the same bytes {tcp * 1000:F2} ms ({dr.CopyGBps:F1} GB/s)");
            }
            finally
            {
                foreach (var c in qCopies) c.Dispose();
                foreach (var t in d32) t.Dispose();
                foreach (var t in d16) t.Dispose();
            }
        }
        return (Results(rows, deq, readGBps), Markdown(rows, deq, readGBps, ctx.Threads, torchThreads, QLoraContext.IsaName(ctx.Isa)));
    }

    /// <summary>CLI.md results: GFLOP/s of each 4-bit product with the dense product as baseline; GB/s for M = 1 and dequantization.</summary>
    public static List<BenchResult> Results(IReadOnlyList<Row> rows, IReadOnlyList<DequantRow> deq, double readGBps)
    {
        var list = new List<BenchResult>();
        foreach (var r in rows)
        {
            string id = $"kernel {r.Op} M={r.M} K={r.K} N={r.N} {r.Dtype}";
            list.Add(new BenchResult($"{id}: 4-bit fused", r.Q4Gflops, "GFLOP/s", r.DenseGflops, $"libtorch {r.Dtype} dense"));
            if (r.M == 1) list.Add(new BenchResult($"{id}: 4-bit weight bandwidth", r.Q4WeightGBps, "GB/s", readGBps, "read bandwidth (same run)"));
        }
        foreach (var d in deq)
            list.Add(new BenchResult($"kernel dequantize K={d.K} N={d.N} to bf16", d.DequantGBps, "GB/s", d.CopyGBps, "copy of the same bytes"));
        list.Add(new BenchResult("read bandwidth", readGBps, "GB/s", null, null));
        return list;
    }

    private static string F(double v, string f) => v.ToString(f, CultureInfo.InvariantCulture);

    /// <summary>The markdown tables.</summary>
    public static string Markdown(IReadOnlyList<Row> rows, IReadOnlyList<DequantRow> deq, double readGBps, int nativeThreads, int torchThreads, string isa)
    {
        var md = new StringBuilder();
        md.AppendLine("### Kernels: fused 4-bit matmul vs libtorch dense, LLaMA-7B shapes");
        md.AppendLine();
        md.AppendLine($"From C#: the 4-bit product is `Q4MatmulFunction.Run` (what `Linear4bit` runs in training: bindings + native kernel, output " +
                      $"allocated per call; NF4 + double quantization, block 64, ISA {isa}, {nativeThreads} native threads); dense is libtorch's `linear` " +
                      $"(forward) or `matmul` (backward) on an unquantized W of the activations' dtype ({torchThreads} torch threads), as LoRA on a dense " +
                      "base runs it. Median of at least 3 calls after a warm-up; M = 1 rotates over copies of W larger than the caches. " +
                      $"Speed = dense time / 4-bit time. Read bandwidth of this machine, same run: {F(readGBps, "0.0")} GB/s.");
        md.AppendLine();
        md.AppendLine("| op | M | K x N | x | 4-bit ms | dense ms | 4-bit GFLOP/s | dense GFLOP/s | speed vs dense | 4-bit weight GB/s (vs read bw) |");
        md.AppendLine("|---|---:|---|---|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
            md.AppendLine($"| {r.Op} | {r.M} | {r.K} x {r.N} | {r.Dtype} | {F(r.Q4Seconds * 1000, "0.00")} | {F(r.DenseSeconds * 1000, "0.00")} | " +
                          $"{F(r.Q4Gflops, "0.0")} | {F(r.DenseGflops, "0.0")} | {F(r.Speed, "0.00")}x | " +
                          (r.M == 1 ? $"{F(r.Q4WeightGBps, "0.0")} ({F(r.Q4WeightGBps / readGBps, "0.00")}x) |" : "- |"));
        md.AppendLine();
        md.AppendLine("| dequantize W to bf16 | ms | GB/s written | copy of the same bytes, ms | GB/s | dequantize vs copy |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|");
        foreach (var d in deq)
            md.AppendLine($"| {d.K} x {d.N} | {F(d.DequantSeconds * 1000, "0.00")} | {F(d.DequantGBps, "0.0")} | {F(d.CopySeconds * 1000, "0.00")} | {F(d.CopyGBps, "0.0")} | {F(d.CopySeconds / d.DequantSeconds, "0.00")}x |");
        return md.ToString();
    }
}
