using QLoRA.Native;
using QLoRA.Native.Interop;

namespace QLoRA.IO;

/// <summary>The header of a llama2.c model.bin.</summary>
/// <param name="Dim">Model width.</param>
/// <param name="HiddenDim">MLP width.</param>
/// <param name="Layers">Decoder layers.</param>
/// <param name="Heads">Attention heads.</param>
/// <param name="KvHeads">Key/value heads (GQA when fewer than <paramref name="Heads"/>).</param>
/// <param name="VocabSize">Vocabulary size.</param>
/// <param name="SeqLen">Maximum sequence length the model was trained with.</param>
/// <param name="SharedClassifier">The output head is the token embedding.</param>
public sealed record Llama2cConfig(int Dim, int HiddenDim, int Layers, int Heads, int KvHeads, int VocabSize, int SeqLen, bool SharedClassifier);

/// <summary>
/// A memory-mapped llama2.c (legacy version 0) model.bin, read through the native core
/// (<c>qlora_llama2c_model_*</c>), which checks the file length against the header exactly.
/// </summary>
public sealed unsafe class Llama2cModelFile : IDisposable
{
    private readonly QLoraLlama2cModelSafeHandle _handle;

    private Llama2cModelFile(QLoraLlama2cModelSafeHandle handle, string path)
    {
        _handle = handle;
        Path = path;
        using var lease = handle.Lease();
        QLoraLlama2cConfig c;
        QLoraException.ThrowIfFailed(NativeMethods.qlora_llama2c_model_config(lease.Value, &c));
        Config = new Llama2cConfig(c.Dim, c.HiddenDim, c.NLayers, c.NHeads, c.NKvHeads, c.VocabSize, c.SeqLen, c.SharedClassifier != 0);
    }

    /// <summary>The model.bin path.</summary>
    public string Path { get; }

    /// <summary>The header.</summary>
    public Llama2cConfig Config { get; }

    /// <summary>Maps and validates a model.bin.</summary>
    /// <exception cref="QLoraException">Unreadable (Io) or inconsistent (Format: the message names the file and the expected length).</exception>
    public static Llama2cModelFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var handle = new QLoraLlama2cModelSafeHandle();
        try
        {
            QLoraLlama2cModelHandle raw;
            using (var s = new Utf8String(path))
                QLoraException.ThrowIfFailed(NativeMethods.qlora_llama2c_model_open(s.Pointer, &raw));
            handle.Attach(raw);
            return new Llama2cModelFile(handle, path);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>An F32 view of one array; <paramref name="layer"/> selects a layer's slice of a per-layer array (-1: the whole array).</summary>
    public QLoraView Weight(QLoraLlama2cWeight which, int layer = -1)
    {
        using var lease = _handle.Lease();
        QLoraView v;
        QLoraException.ThrowIfFailed(NativeMethods.qlora_llama2c_model_weight(lease.Value, which, layer, &v));
        return v;
    }

    /// <summary>Unmaps the file.</summary>
    public void Dispose() => _handle.Dispose();
}

/// <summary>One entry of a llama2.c tokenizer.bin.</summary>
/// <param name="Bytes">The piece's bytes as stored (spaces are plain ' ').</param>
/// <param name="Score">The merge score (higher merges first).</param>
public sealed record Llama2cToken(byte[] Bytes, float Score);

/// <summary>A llama2.c tokenizer.bin, read through the native core (<c>qlora_llama2c_tokenizer_*</c>).</summary>
public static unsafe class Llama2cTokenizerFile
{
    /// <summary>
    /// Reads every token. <paramref name="vocabSize"/> &gt; 0 requires exactly that many tokens (pass the model's
    /// vocabulary size); 0 reads as many as the file holds.
    /// </summary>
    /// <exception cref="QLoraException">Unreadable, truncated, or a different vocabulary size (the message names the file).</exception>
    public static IReadOnlyList<Llama2cToken> Read(string path, int vocabSize = 0)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentOutOfRangeException.ThrowIfNegative(vocabSize);
        using var handle = new QLoraLlama2cTokenizerSafeHandle();
        QLoraLlama2cTokenizerHandle raw;
        using (var s = new Utf8String(path))
            QLoraException.ThrowIfFailed(NativeMethods.qlora_llama2c_tokenizer_open(s.Pointer, vocabSize, &raw));
        handle.Attach(raw);
        using var lease = handle.Lease();
        int n, maxLen;
        QLoraException.ThrowIfFailed(NativeMethods.qlora_llama2c_tokenizer_info(lease.Value, &n, &maxLen));
        var tokens = new Llama2cToken[n];
        for (int i = 0; i < n; i++)
        {
            byte* piece;
            int length;
            float score;
            QLoraException.ThrowIfFailed(NativeMethods.qlora_llama2c_tokenizer_token(lease.Value, i, &piece, &length, &score));
            tokens[i] = new Llama2cToken(new ReadOnlySpan<byte>(piece, length).ToArray(), score);
        }
        return tokens;
    }
}
