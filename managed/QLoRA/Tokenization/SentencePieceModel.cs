using System.Text;

using QLoRA.IO;

namespace QLoRA.Tokenization;

/// <summary>The type of a SentencePiece vocabulary entry (sentencepiece_model.proto, SentencePiece.Type).</summary>
public enum PieceType
{
    /// <summary>An ordinary piece.</summary>
    Normal = 1,

    /// <summary>The unknown token.</summary>
    Unknown = 2,

    /// <summary>A control symbol (&lt;s&gt;, &lt;/s&gt;): never produced from text.</summary>
    Control = 3,

    /// <summary>A user-defined symbol.</summary>
    UserDefined = 4,

    /// <summary>Unused.</summary>
    Unused = 5,

    /// <summary>A byte-fallback token &lt;0xNN&gt;.</summary>
    Byte = 6,
}

/// <summary>One vocabulary entry.</summary>
/// <param name="Piece">The piece text (spaces as U+2581).</param>
/// <param name="Score">Merge score (BPE: higher merges first).</param>
/// <param name="Type">Its type.</param>
public sealed record SentencePiece(string Piece, float Score, PieceType Type);

/// <summary>
/// A SentencePiece BPE model (the <c>ModelProto</c> of a <c>tokenizer.model</c> file), built in memory and
/// serialized as protobuf so that Microsoft.ML.Tokenizers' <c>LlamaTokenizer</c> can load it, or written next to
/// a converted Hugging Face model. Only the fields Llama's tokenizer uses are written.
/// </summary>
public sealed class SentencePieceModel
{
    /// <summary>The vocabulary, by id.</summary>
    public required IReadOnlyList<SentencePiece> Pieces { get; init; }

    /// <summary>Byte fallback for characters outside the vocabulary (Llama: true).</summary>
    public bool ByteFallback { get; init; } = true;

    /// <summary>Prefix the text with a space before encoding (Llama: true).</summary>
    public bool AddDummyPrefix { get; init; } = true;

    /// <summary>Collapse runs of whitespace (Llama: false).</summary>
    public bool RemoveExtraWhitespaces { get; init; }

    /// <summary>Id of &lt;unk&gt;.</summary>
    public int UnkId { get; init; }

    /// <summary>Id of &lt;s&gt;.</summary>
    public int BosId { get; init; } = 1;

    /// <summary>Id of &lt;/s&gt;.</summary>
    public int EosId { get; init; } = 2;

    /// <summary>Id of the padding token, or -1.</summary>
    public int PadId { get; init; } = -1;

    /// <summary>U+2581, SentencePiece's visible space.</summary>
    public const char Space = '\u2581';

    /// <summary>
    /// Builds the model from a llama2.c tokenizer.bin (FORMATS.md): ids 0..2 are &lt;unk&gt;, &lt;s&gt;, &lt;/s&gt;;
    /// ids 3..258 the byte tokens 0x00..0xFF (stored as the UTF-8 encoding of the code point of the byte value);
    /// the rest ordinary pieces whose plain spaces become U+2581. Scores are kept.
    /// </summary>
    /// <exception cref="InvalidDataException">The file is not laid out that way (the message names the file and the id).</exception>
    public static SentencePieceModel FromLlama2c(IReadOnlyList<Llama2cToken> tokens, string source)
    {
        if (tokens.Count < 259)
            throw new InvalidDataException($"{source}: {tokens.Count} tokens; a Llama tokenizer.bin has <unk>, <s>, </s> and 256 byte tokens first (at least 259)");
        var pieces = new SentencePiece[tokens.Count];
        pieces[0] = new SentencePiece("<unk>", tokens[0].Score, PieceType.Unknown);
        pieces[1] = new SentencePiece("<s>", tokens[1].Score, PieceType.Control);
        pieces[2] = new SentencePiece("</s>", tokens[2].Score, PieceType.Control);
        for (int b = 0; b < 256; b++)
        {
            byte[] stored = tokens[3 + b].Bytes;
            byte[] expect = Encoding.UTF8.GetBytes(((char)b).ToString());
            if (!stored.AsSpan().SequenceEqual(expect))
                throw new InvalidDataException(
                    $"{source}: token {3 + b} should be the byte token 0x{b:X2} (stored as {Convert.ToHexString(expect)}), found {Convert.ToHexString(stored)}: not a Llama 2 tokenizer.bin");
            pieces[3 + b] = new SentencePiece($"<0x{b:X2}>", tokens[3 + b].Score, PieceType.Byte);
        }
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 259; i < tokens.Count; i++)
        {
            string text;
            try
            {
                text = new UTF8Encoding(false, true).GetString(tokens[i].Bytes);
            }
            catch (DecoderFallbackException)
            {
                throw new InvalidDataException($"{source}: token {i} is not valid UTF-8 ({Convert.ToHexString(tokens[i].Bytes)})");
            }
            if (text.Length == 0) throw new InvalidDataException($"{source}: token {i} is empty");
            text = text.Replace(' ', Space);
            if (!seen.Add(text)) throw new InvalidDataException($"{source}: token {i} (\"{text}\") appears twice");
            pieces[i] = new SentencePiece(text, tokens[i].Score, PieceType.Normal);
        }
        return new SentencePieceModel { Pieces = pieces };
    }

    /// <summary>The serialized ModelProto (what a <c>tokenizer.model</c> file holds).</summary>
    public byte[] ToProtobuf()
    {
        var model = new ProtoWriter();
        foreach (var p in Pieces)
        {
            var piece = new ProtoWriter();
            piece.String(1, p.Piece);
            piece.Float(2, p.Score);
            piece.Varint(3, (ulong)p.Type);
            model.Message(1, piece);
        }
        var trainer = new ProtoWriter();
        trainer.Varint(3, 2);                         // model_type = BPE
        trainer.Varint(4, (ulong)Pieces.Count);       // vocab_size
        trainer.Varint(35, ByteFallback ? 1UL : 0UL); // byte_fallback
        trainer.Varint(40, (ulong)(long)UnkId);
        trainer.Varint(41, (ulong)(long)BosId);
        trainer.Varint(42, (ulong)(long)EosId);
        trainer.Varint(43, (ulong)(long)PadId);       // -1 as a 64-bit two's complement varint, as protobuf does
        trainer.String(45, "<unk>");
        trainer.String(46, "<s>");
        trainer.String(47, "</s>");
        model.Message(2, trainer);
        var normalizer = new ProtoWriter();
        normalizer.String(1, "identity");
        normalizer.Varint(3, AddDummyPrefix ? 1UL : 0UL);
        normalizer.Varint(4, RemoveExtraWhitespaces ? 1UL : 0UL);
        normalizer.Varint(5, 1);                      // escape_whitespaces
        model.Message(3, normalizer);
        return model.ToArray();
    }

    /// <summary>A minimal protobuf wire-format writer.</summary>
    private sealed class ProtoWriter
    {
        private readonly MemoryStream _s = new();

        public void Varint(int field, ulong value)
        {
            Raw((ulong)field << 3);
            Raw(value);
        }

        public void Float(int field, float value)
        {
            Raw(((ulong)field << 3) | 5);
            Span<byte> b = stackalloc byte[4];
            BitConverter.TryWriteBytes(b, value);
            if (!BitConverter.IsLittleEndian) b.Reverse();
            _s.Write(b);
        }

        public void String(int field, string value) => Bytes(field, Encoding.UTF8.GetBytes(value));

        public void Message(int field, ProtoWriter inner) => Bytes(field, inner.ToArray());

        public byte[] ToArray() => _s.ToArray();

        private void Bytes(int field, byte[] bytes)
        {
            Raw(((ulong)field << 3) | 2);
            Raw((ulong)bytes.Length);
            _s.Write(bytes);
        }

        private void Raw(ulong v)
        {
            while (v >= 0x80)
            {
                _s.WriteByte((byte)(v | 0x80));
                v >>= 7;
            }
            _s.WriteByte((byte)v);
        }
    }
}
