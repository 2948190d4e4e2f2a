using System.Diagnostics;

using QLoRA.Native;
using QLoRA.Native.Interop;

namespace QLoRA.Cli.Demo;

/// <summary>One format's figures over all linear weights of the model.</summary>
internal sealed record FormatResult(
    string Format, long Params, long StorageBytes, double BitsPerParam, double Rmse, double RelativeRmse,
    double MaxAbsError, double QuantizeSeconds, double DequantizeSeconds);

/// <summary>
/// What the project does for real today on the default model: quantize every linear weight matrix of
/// stories15M (wq, wk, wv, wo, w1, w2, w3 of every layer) through the native core and measure the storage
/// and the error against the fp32 original.
/// </summary>
internal static class QuantizationDemo
{
    public static readonly (string Name, QuantParams Params)[] Formats =
    [
        ("nf4+dq", new QuantParams { QuantType = QLoraQuantType.Nf4, BlockSize = 64, DoubleQuant = true }),
        ("nf4", new QuantParams { QuantType = QLoraQuantType.Nf4, BlockSize = 64, DoubleQuant = false }),
        ("fp4+dq", new QuantParams { QuantType = QLoraQuantType.Fp4, BlockSize = 64, DoubleQuant = true }),
        ("fp4", new QuantParams { QuantType = QLoraQuantType.Fp4, BlockSize = 64, DoubleQuant = false }),
    ];

    public static List<FormatResult> Run(Llama2cWeights model, QLoraContext ctx, Action<string> log)
    {
        // Read every matrix once (22.8 MiB for stories15M).
        var weights = model.Linear.Select(m => (m, model.Read(m))).ToList();
        double sumSq = 0;
        foreach (var (_, w) in weights)
            foreach (float v in w) sumSq += (double)v * v;
        long n = weights.Sum(x => x.m.Count);
        double rms = Math.Sqrt(sumSq / n);

        var results = new List<FormatResult>();
        foreach (var (name, p) in Formats)
        {
            double err2 = 0, maxErr = 0, tq = 0, td = 0;
            long storage = 0;
            foreach (var (m, w) in weights)
            {
                var sw = Stopwatch.StartNew();
                using var q = Q4Tensor.Quantize(ctx, w, m.Rows, m.Cols, p);
                tq += sw.Elapsed.TotalSeconds;
                var back = new float[w.Length];
                sw.Restart();
                q.Dequantize(ctx, back);
                td += sw.Elapsed.TotalSeconds;
                storage += q.Info.StorageBytes;
                for (int i = 0; i < w.Length; i++)
                {
                    double e = (double)back[i] - w[i];
                    err2 += e * e;
                    maxErr = Math.Max(maxErr, Math.Abs(e));
                }
            }
            double rmse = Math.Sqrt(err2 / n);
            var r = new FormatResult(name, n, storage, storage * 8.0 / n, rmse, rmse / rms, maxErr, tq, td);
            log($"{name}: {r.BitsPerParam:F3} bits/param, RMSE {r.Rmse:E3}");
            results.Add(r);
        }
        return results;
    }
}
