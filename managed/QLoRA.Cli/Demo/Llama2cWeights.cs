namespace QLoRA.Cli.Demo;

/// <summary>
/// The smallest reader of a llama2.c checkpoint that the quantization demo needs: the header and the
/// offsets of the linear weight matrices (FORMATS.md, "llama2.c checkpoint"). The model-loader work will
/// replace it with the full loader.
/// </summary>
internal sealed class Llama2cWeights
{
    public required int Dim, HiddenDim, Layers, Heads, KvHeads, VocabSize, SeqLen;
    public required bool SharedClassifier;
    public required string Path;
    public required List<Matrix> Linear;

    public int KvDim => Dim * KvHeads / Heads;

    /// <summary>One [Rows = out, Cols = in] fp32 matrix at a byte offset of the file.</summary>
    public sealed record Matrix(string Name, int Layer, int Rows, int Cols, long Offset)
    {
        public long Count => (long)Rows * Cols;
    }

    public static Llama2cWeights Open(string path)
    {
        using var f = File.OpenRead(path);
        Span<int> h = stackalloc int[7];
        if (f.Read(System.Runtime.InteropServices.MemoryMarshal.AsBytes(h)) != 28)
            throw new InvalidDataException($"{path}: shorter than the 28-byte llama2.c header");
        int dim = h[0], hidden = h[1], layers = h[2], heads = h[3], kvHeads = h[4], vocab = h[5], seq = h[6];
        if (dim <= 0 || hidden <= 0 || layers <= 0 || heads <= 0 || kvHeads <= 0 || vocab == 0 || seq <= 0 ||
            dim % heads != 0 || heads % kvHeads != 0)
            throw new InvalidDataException(
                $"{path}: not a llama2.c checkpoint header (dim {dim}, hidden_dim {hidden}, n_layers {layers}, n_heads {heads}, n_kv_heads {kvHeads}, vocab_size {vocab}, seq_len {seq})");
        bool shared = vocab > 0;
        vocab = Math.Abs(vocab);
        int kvDim = dim * kvHeads / heads;
        long at = 28;
        long F(long floats) { long start = at; at += floats * 4; return start; }
        F((long)vocab * dim);               // token_embedding
        F((long)layers * dim);              // rms_att
        long wq = F((long)layers * dim * dim);
        long wk = F((long)layers * kvDim * dim);
        long wv = F((long)layers * kvDim * dim);
        long wo = F((long)layers * dim * dim);
        F((long)layers * dim);              // rms_ffn
        long w1 = F((long)layers * hidden * dim);
        long w2 = F((long)layers * dim * hidden);
        long w3 = F((long)layers * hidden * dim);
        F(dim);                             // rms_final
        if (at > f.Length)
            throw new InvalidDataException($"{path}: {f.Length} bytes, but its header (dim {dim}, {layers} layers) needs at least {at}");
        var list = new List<Matrix>();
        for (int l = 0; l < layers; l++)
        {
            list.Add(new("wq", l, dim, dim, wq + 4L * l * dim * dim));
            list.Add(new("wk", l, kvDim, dim, wk + 4L * l * kvDim * dim));
            list.Add(new("wv", l, kvDim, dim, wv + 4L * l * kvDim * dim));
            list.Add(new("wo", l, dim, dim, wo + 4L * l * dim * dim));
            list.Add(new("w1", l, hidden, dim, w1 + 4L * l * hidden * dim));
            list.Add(new("w2", l, dim, hidden, w2 + 4L * l * dim * hidden));
            list.Add(new("w3", l, hidden, dim, w3 + 4L * l * hidden * dim));
        }
        return new Llama2cWeights
        {
            Dim = dim, HiddenDim = hidden, Layers = layers, Heads = heads, KvHeads = kvHeads, VocabSize = vocab, SeqLen = seq,
            SharedClassifier = shared, Path = path, Linear = list,
        };
    }

    public float[] Read(Matrix m)
    {
        var data = new float[m.Count];
        using var f = File.OpenRead(Path);
        f.Position = m.Offset;
        f.ReadExactly(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
        return data;
    }
}
