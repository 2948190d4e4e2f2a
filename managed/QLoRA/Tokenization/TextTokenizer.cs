using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

using Microsoft.ML.Tokenizers;

using QLoRA.IO;

namespace QLoRA.Tokenization;

/// <summary>
/// A model's tokenizer: Microsoft.ML.Tokenizers underneath (a SentencePiece <c>LlamaTokenizer</c> or a byte-level
/// <c>BpeTokenizer</c>), plus what the model needs around it: BOS/EOS ids, whether BOS is prepended, the vocabulary
/// size, and a chat template. Loaded from llama2.c's tokenizer.bin, a SentencePiece tokenizer.model, or a Hugging
/// Face tokenizer.json (+ tokenizer_config.json).
/// </summary>
public sealed class TextTokenizer
{
    private readonly SentencePieceTokenizer? _sp;
    private readonly BpeTokenizer? _bpe;
    private readonly Dictionary<int, string> _specialById;

    private TextTokenizer(Tokenizer inner, string kind, string source, int vocabSize, int? bos, IReadOnlyList<int> eos, bool addBos,
        IReadOnlyDictionary<string, int> special)
    {
        Inner = inner;
        _sp = inner as SentencePieceTokenizer;
        _bpe = inner as BpeTokenizer;
        Kind = kind;
        Source = source;
        VocabSize = vocabSize;
        BosId = bos;
        EosIds = eos;
        AddBos = addBos;
        SpecialTokens = special;
        _specialById = special.GroupBy(kv => kv.Value).ToDictionary(g => g.Key, g => g.First().Key);
    }

    /// <summary>The Microsoft.ML.Tokenizers object.</summary>
    public Tokenizer Inner { get; }

    /// <summary>"sentencepiece" or "bpe-byte-level".</summary>
    public string Kind { get; }

    /// <summary>Where it was loaded from.</summary>
    public string Source { get; }

    /// <summary>Number of ids (highest id + 1), special tokens included.</summary>
    public int VocabSize { get; }

    /// <summary>Beginning-of-sequence id, if the tokenizer has one.</summary>
    public int? BosId { get; }

    /// <summary>End-of-sequence ids (generation stops on any).</summary>
    public IReadOnlyList<int> EosIds { get; private set; }

    /// <summary>Whether <see cref="Encode"/> prepends BOS by default.</summary>
    public bool AddBos { get; }

    /// <summary>Special tokens recognized as a whole in text (content → id).</summary>
    public IReadOnlyDictionary<string, int> SpecialTokens { get; }

    /// <summary>The chat template that formats instruction prompts for this model.</summary>
    public ChatTemplate ChatTemplate { get; set; } = ChatTemplate.Alpaca;

    /// <summary>Adds end-of-sequence ids (e.g. from generation_config.json).</summary>
    public void AddEosIds(IEnumerable<int> ids) => EosIds = EosIds.Concat(ids).Distinct().ToList();

    /// <summary>Token ids of <paramref name="text"/>, with BOS first when <paramref name="addBos"/> (default: <see cref="AddBos"/>).</summary>
    public List<int> Encode(string text, bool? addBos = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        bool bos = (addBos ?? AddBos) && BosId is not null;
        var ids = new List<int>();
        if (bos) ids.Add(BosId!.Value);
        if (text.Length == 0) return ids;
        if (_sp is not null)
            ids.AddRange(_sp.EncodeToIds(text, addBeginningOfSentence: false, addEndOfSentence: false));
        else
            ids.AddRange(Inner.EncodeToIds(text));
        return ids;
    }

    /// <summary>Text of <paramref name="ids"/>; special tokens (BOS, EOS, ...) are left out unless <paramref name="keepSpecial"/>.</summary>
    public string Decode(IEnumerable<int> ids, bool keepSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var list = ids as IReadOnlyList<int> ?? ids.ToList();
        foreach (int id in list)
            if (id < 0 || id >= VocabSize) throw new ArgumentOutOfRangeException(nameof(ids), $"token id {id} is outside the vocabulary [0, {VocabSize})");
        if (_sp is not null) return _sp.Decode(list, considerSpecialTokens: keepSpecial) ?? "";
        if (_bpe is not null)
        {
            // Decode runs of ordinary tokens with the BPE decoder, special tokens as their text (or not at all).
            var sb = new StringBuilder();
            var run = new List<int>();
            foreach (int id in list)
            {
                if (_specialById.TryGetValue(id, out string? special))
                {
                    if (run.Count > 0) sb.Append(_bpe.Decode(run, considerSpecialTokens: false));
                    run.Clear();
                    if (keepSpecial) sb.Append(special);
                }
                else run.Add(id);
            }
            if (run.Count > 0) sb.Append(_bpe.Decode(run, considerSpecialTokens: false));
            return sb.ToString();
        }
        return Inner.Decode(list) ?? "";
    }

    /// <summary>
    /// Incremental decoding for streaming: feed ids one at a time, get the new text. Text is held back while the
    /// tokens so far end inside a multi-byte character (byte-fallback or byte-level pieces).
    /// </summary>
    public sealed class StreamDecoder(TextTokenizer tokenizer, IEnumerable<int>? prefix = null)
    {
        private readonly List<int> _ids = prefix?.ToList() ?? [];
        private int _emitted = tokenizer.Decode(prefix?.ToList() ?? []).Length;

        /// <summary>Adds one id; returns the text it completes (possibly empty).</summary>
        public string Push(int id)
        {
            _ids.Add(id);
            string all = tokenizer.Decode(_ids);
            if (all.Length > 0 && all[^1] == '\uFFFD') return "";
            if (all.Length < _emitted) return "";
            string fresh = all[_emitted..];
            _emitted = all.Length;
            return fresh;
        }
    }

    /// <summary>
    /// Loads llama2.c's tokenizer.bin (converted in memory to a SentencePiece model, FORMATS.md).
    /// <paramref name="vocabSize"/> &gt; 0 requires the file to hold exactly that many tokens (the model's).
    /// </summary>
    public static TextTokenizer FromLlama2cBin(string path, int vocabSize = 0)
    {
        var tokens = Llama2cTokenizerFile.Read(path, vocabSize);
        var model = SentencePieceModel.FromLlama2c(tokens, path);
        return FromSentencePieceBytes(model.ToProtobuf(), path, addBos: true);
    }

    /// <summary>Loads a SentencePiece <c>tokenizer.model</c> (Llama-style BPE).</summary>
    public static TextTokenizer FromSentencePieceModel(string path, bool addBos = true)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{path}: cannot read the tokenizer: {e.Message}", e);
        }
        return FromSentencePieceBytes(bytes, path, addBos);
    }

    /// <summary>Loads a serialized SentencePiece ModelProto.</summary>
    public static TextTokenizer FromSentencePieceBytes(byte[] modelProto, string source, bool addBos = true)
    {
        LlamaTokenizer sp;
        try
        {
            using var stream = new MemoryStream(modelProto, writable: false);
            sp = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            throw new InvalidDataException($"{source}: not a SentencePiece BPE model ({e.GetType().Name}: {e.Message})", e);
        }
        int vocab = sp.Vocabulary.Count == 0 ? 0 : sp.Vocabulary.Values.Max() + 1;
        var special = new Dictionary<string, int>(StringComparer.Ordinal)
        {
            [sp.BeginningOfSentenceToken] = sp.BeginningOfSentenceId,
            [sp.EndOfSentenceToken] = sp.EndOfSentenceId,
        };
        return new TextTokenizer(sp, "sentencepiece", source, vocab, sp.BeginningOfSentenceId, [sp.EndOfSentenceId], addBos, special);
    }

    /// <summary>
    /// Loads a Hugging Face <c>tokenizer.json</c>: byte-level BPE (GPT-2 / Llama 3 / SmolLM style) or a
    /// SentencePiece-converted BPE with byte fallback (Llama 2 style). <paramref name="configPath"/> is the
    /// optional <c>tokenizer_config.json</c> (bos/eos tokens, add_bos_token, chat_template).
    /// </summary>
    /// <exception cref="InvalidDataException">Not JSON, or a tokenizer model/pre-tokenizer this loader does not implement (named in the message).</exception>
    public static TextTokenizer FromHuggingFaceJson(string path, string? configPath = null, Action<string>? log = null)
    {
        JsonObject root = ReadJsonObject(path);
        JsonObject? config = configPath is not null && File.Exists(configPath) ? ReadJsonObject(configPath) : null;
        if (root["model"] is not JsonObject model)
            throw new InvalidDataException($"{path}: no \"model\" object");
        string type = model["type"]?.GetValue<string>() ?? "BPE";
        if (type != "BPE")
            throw new InvalidDataException($"{path}: tokenizer model type \"{type}\" is not supported (supported: BPE, byte-level or SentencePiece-style)");
        if (model["vocab"] is not JsonObject vocabJson)
            throw new InvalidDataException($"{path}: model.vocab is missing or not an object");
        var vocab = new Dictionary<string, int>(vocabJson.Count, StringComparer.Ordinal);
        foreach (var (k, v) in vocabJson)
            vocab[k] = v is JsonValue jv && jv.TryGetValue(out int id) ? id : throw new InvalidDataException($"{path}: model.vocab[\"{k}\"] is not an integer id");
        var merges = new List<string>();
        if (model["merges"] is JsonArray ma)
            foreach (var m in ma)
                merges.Add(m switch
                {
                    JsonValue s when s.TryGetValue(out string? line) => line,
                    JsonArray pair when pair.Count == 2 => pair[0]!.GetValue<string>() + " " + pair[1]!.GetValue<string>(),
                    _ => throw new InvalidDataException($"{path}: model.merges has an entry that is neither \"a b\" nor [\"a\", \"b\"]: {m?.ToJsonString()}"),
                });

        var added = new Dictionary<string, int>(StringComparer.Ordinal);
        if (root["added_tokens"] is JsonArray at)
            foreach (var t in at.OfType<JsonObject>())
                added[t["content"]!.GetValue<string>()] = t["id"]!.GetValue<int>();

        string? bosText = TokenText(config?["bos_token"]);
        string? eosText = TokenText(config?["eos_token"]);
        bool byteFallback = model["byte_fallback"] is JsonValue bf && bf.GetValue<bool>();
        bool byteLevel = HasType(root["pre_tokenizer"], "ByteLevel") || HasType(root["decoder"], "ByteLevel");

        // BOS: tokenizer_config's add_bos_token, else whether the post-processor's template starts with a special token.
        bool? addBosConfig = config?["add_bos_token"] is JsonValue ab && ab.TryGetValue(out bool abv) ? abv : null;
        string? templateBos = null;
        if (root["post_processor"] is JsonObject pp && pp["type"]?.GetValue<string>() == "TemplateProcessing" &&
            pp["single"] is JsonArray single && single.Count > 0 && single[0]?["SpecialToken"] is JsonObject st)
            templateBos = st["id"]?.GetValue<string>();
        bosText ??= templateBos;
        bool addBos = addBosConfig ?? templateBos is not null;

        int maxId = Math.Max(vocab.Count == 0 ? -1 : vocab.Values.Max(), added.Count == 0 ? -1 : added.Values.Max());
        int? bosId = bosText is not null && (added.TryGetValue(bosText, out int b1) || vocab.TryGetValue(bosText, out b1)) ? b1 : null;
        var eos = new List<int>();
        if (eosText is not null && (added.TryGetValue(eosText, out int e1) || vocab.TryGetValue(eosText, out e1))) eos.Add(e1);

        TextTokenizer result;
        if (byteLevel)
        {
            var options = new BpeOptions(vocab)
            {
                Merges = merges,
                ByteLevel = true,
                SpecialTokens = added.Count > 0 ? added : null,
                PreTokenizer = new RegexPreTokenizer(ByteLevelRegex(root["pre_tokenizer"], path), added.Count > 0 ? added : null),
            };
            BpeTokenizer bpe;
            try
            {
                bpe = BpeTokenizer.Create(options);
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException)
            {
                throw new InvalidDataException($"{path}: the byte-level BPE could not be built: {e.Message}", e);
            }
            result = new TextTokenizer(bpe, "bpe-byte-level", path, maxId + 1, bosId, eos, addBos, added);
        }
        else if (byteFallback)
        {
            // A SentencePiece BPE exported to tokenizer.json (Llama 2 style): rebuild the SentencePiece model.
            // Merge priority becomes a piece score: the piece made by merge r scores -r (earlier merges win).
            var score = new Dictionary<string, float>(StringComparer.Ordinal);
            for (int r = 0; r < merges.Count; r++)
            {
                int sp = merges[r].IndexOf(' ', StringComparison.Ordinal);
                if (sp <= 0) throw new InvalidDataException($"{path}: merge {r} (\"{merges[r]}\") is not \"a b\"");
                score.TryAdd(merges[r][..sp] + merges[r][(sp + 1)..], -r);
            }
            var pieces = new SentencePiece[maxId + 1];
            foreach (var (text, id) in vocab)
            {
                PieceType pt = Regex.IsMatch(text, "^<0x[0-9A-Fa-f]{2}>$") ? PieceType.Byte : PieceType.Normal;
                pieces[id] = new SentencePiece(text, score.GetValueOrDefault(text, pt == PieceType.Byte ? 0 : -merges.Count - id), pt);
            }
            foreach (var (text, id) in added)
                pieces[id] = new SentencePiece(text, 0, text == (TokenText(model["unk_token"]) ?? "<unk>") ? PieceType.Unknown : PieceType.Control);
            for (int i = 0; i < pieces.Length; i++)
                if (pieces[i] is null) throw new InvalidDataException($"{path}: no token has id {i} (ids must be contiguous)");
            int unk = vocab.TryGetValue(TokenText(model["unk_token"]) ?? "<unk>", out int u) || added.TryGetValue("<unk>", out u) ? u : 0;
            var spm = new SentencePieceModel
            {
                Pieces = pieces,
                UnkId = unk,
                BosId = bosId ?? 1,
                EosId = eos.Count > 0 ? eos[0] : 2,
                AddDummyPrefix = HasPrepend(root["normalizer"]),
            };
            var tok = FromSentencePieceBytes(spm.ToProtobuf(), path, addBos);
            result = new TextTokenizer(tok.Inner, "sentencepiece", path, maxId + 1, bosId, eos, addBos, added);
        }
        else
            throw new InvalidDataException($"{path}: a BPE tokenizer without byte-level pre-tokenization or byte fallback is not supported");

        if (config?["chat_template"] is JsonNode tmpl)
            result.ChatTemplate = ChatTemplate.FromJinja(tmpl is JsonValue tv && tv.TryGetValue(out string? s) ? s : tmpl.ToJsonString(), configPath!, log);
        return result;
    }

    /// <summary>
    /// The regex that splits text before byte-level BPE, from the tokenizer.json pre_tokenizer: a Split with a
    /// regex (Llama 3), ByteLevel with use_regex (GPT-2), or Digits(individual) before it (SmolLM).
    /// </summary>
    internal static Regex ByteLevelRegex(JsonNode? pre, string source)
    {
        const string Gpt2 = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
        var steps = pre is JsonObject o && o["type"]?.GetValue<string>() == "Sequence" && o["pretokenizers"] is JsonArray a
            ? a.OfType<JsonObject>().ToList()
            : pre is JsonObject single ? [single] : [];
        string? pattern = null;
        bool individualDigits = false;
        foreach (var step in steps)
        {
            string t = step["type"]?.GetValue<string>() ?? "";
            switch (t)
            {
                case "Split":
                    if (step["pattern"]?["Regex"]?.GetValue<string>() is not string rx)
                        throw new InvalidDataException($"{source}: a Split pre-tokenizer without a regex pattern is not supported");
                    if (step["behavior"]?.GetValue<string>() is string beh && beh != "Isolated")
                        throw new InvalidDataException($"{source}: Split behavior \"{beh}\" is not supported (only Isolated)");
                    if (step["invert"] is JsonValue inv && inv.GetValue<bool>())
                        throw new InvalidDataException($"{source}: an inverted Split pre-tokenizer is not supported");
                    pattern = rx;
                    break;
                case "ByteLevel":
                    if (step["add_prefix_space"] is JsonValue aps && aps.GetValue<bool>())
                        throw new InvalidDataException($"{source}: ByteLevel add_prefix_space=true is not supported");
                    if (step["use_regex"] is not JsonValue ur || ur.GetValue<bool>()) pattern ??= Gpt2;
                    break;
                case "Digits":
                    individualDigits = step["individual_digits"] is JsonValue id && id.GetValue<bool>();
                    if (!individualDigits) pattern ??= null;
                    break;
                default:
                    throw new InvalidDataException($"{source}: pre-tokenizer \"{t}\" is not supported (supported: Split, ByteLevel, Digits)");
            }
        }
        pattern ??= Gpt2;
        if (individualDigits)
            // Digits(individual_digits) runs first: every digit is its own piece, never joined to a space.
            pattern = pattern.Replace(@" ?\p{N}+", @"\p{N}", StringComparison.Ordinal).Replace(@"\p{N}{1,3}", @"\p{N}", StringComparison.Ordinal);
        return new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant);
    }

    private static bool HasType(JsonNode? node, string type)
    {
        if (node is not JsonObject o) return false;
        if (o["type"]?.GetValue<string>() == type) return true;
        foreach (string list in new[] { "pretokenizers", "decoders", "normalizers", "processors" })
            if (o[list] is JsonArray a && a.Any(e => HasType(e, type))) return true;
        return false;
    }

    private static bool HasPrepend(JsonNode? normalizer) =>
        normalizer is JsonObject o && (o["type"]?.GetValue<string>() == "Prepend" ||
                                       (o["normalizers"] is JsonArray a && a.Any(HasPrepend)));

    private static string? TokenText(JsonNode? n) => n switch
    {
        JsonValue v when v.TryGetValue(out string? s) => s,
        JsonObject o => o["content"]?.GetValue<string>(),
        _ => null,
    };

    internal static JsonObject ReadJsonObject(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"{path}: {e.Message}", e);
        }
        try
        {
            return JsonNode.Parse(text) as JsonObject ?? throw new InvalidDataException($"{path}: not a JSON object");
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
    }
}
