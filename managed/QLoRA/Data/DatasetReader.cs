using System.Text;
using System.Text.Json;

using QLoRA.Tokenization;

namespace QLoRA.Data;

/// <summary>The layout of a data file's records.</summary>
public enum DataFormat
{
    /// <summary>Decided per record from its fields (see <see cref="DatasetReader"/>); .txt files are plain text.</summary>
    Auto,
    /// <summary>Alpaca: "instruction", optional "input", "output".</summary>
    Alpaca,
    /// <summary>Generic pairs: "input" (the prompt, used verbatim) and "output".</summary>
    InputOutput,
    /// <summary>Chat: "messages" [{role, content}] (OASST / OpenAI style) or "conversations" [{from, value}] (ShareGPT).</summary>
    Chat,
    /// <summary>Plain text (causal LM on every token): a .txt file, or records with a "text" field.</summary>
    Text,
}

/// <summary>Options of <see cref="DatasetReader"/>.</summary>
public sealed record DataReadOptions
{
    /// <summary>The record layout; Auto decides per record.</summary>
    public DataFormat Format { get; init; } = DataFormat.Auto;

    /// <summary>How Alpaca instructions become prompts.</summary>
    public PromptTemplate Prompt { get; init; } = PromptTemplate.Compact;
}

/// <summary>
/// Reads training data: a JSON array (.json) or JSON Lines (.jsonl, one object per line, blank lines ignored)
/// of Alpaca, input/output, chat or text records, or a plain .txt file. With <see cref="DataFormat.Auto"/> a
/// record with "instruction" is Alpaca, "messages"/"conversations" a chat, "input"+"output" a pair, "text"
/// plain text. Any malformed record is a <see cref="DataFormatException"/> naming the file and line.
/// </summary>
public static class DatasetReader
{
    /// <summary>Reads <paramref name="path"/>. Plain-text data comes back as one example per record (or per file).</summary>
    /// <exception cref="FileNotFoundException">No such file.</exception>
    /// <exception cref="DataFormatException">A malformed record, mixed text and non-text records, or no record at all.</exception>
    public static (List<DataExample> Examples, bool IsPlainText) Read(string path, DataReadOptions? options = null)
    {
        options ??= new DataReadOptions();
        if (!File.Exists(path)) throw new FileNotFoundException($"data file {path} does not exist", path);
        string name = Path.GetFileName(path);
        string ext = Path.GetExtension(path).ToLowerInvariant();
        var examples = new List<DataExample>();
        bool? plain = null;
        void Add(DataExample e, bool isText, string where)
        {
            if (plain is { } p && p != isText)
                throw new DataFormatException($"{where}: a {(isText ? "text" : "non-text")} record in a file of {(p ? "text" : "instruction or chat")} records; one file holds one kind");
            plain = isText;
            examples.Add(e);
        }

        if (ext == ".txt" || (options.Format == DataFormat.Text && ext is not (".json" or ".jsonl")))
        {
            string text = ReadUtf8(path);
            if (text.Length > 0) Add(new DataExample([new Segment(text, true)], name), true, name);
        }
        else if (ext == ".json")
        {
            string text = ReadUtf8(path);
            JsonDocument doc;
            try
            {
                doc = JsonDocument.Parse(text, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Disallow });
            }
            catch (JsonException e)
            {
                throw new DataFormatException($"{name}:{(e.LineNumber ?? 0) + 1}: not valid JSON: {FirstSentence(e.Message)}", e);
            }
            using (doc)
            {
                if (doc.RootElement.ValueKind != JsonValueKind.Array)
                    throw new DataFormatException($"{name}:1: a .json data file must hold an array of records, got a {doc.RootElement.ValueKind}");
                int[] lines = RecordLines(text, doc.RootElement.GetArrayLength());
                int index = 0;
                foreach (var record in doc.RootElement.EnumerateArray())
                {
                    string where = $"{name}:{lines[index]} (record {index})";
                    index++;
                    var (e, isText) = Parse(record, where, options);
                    Add(e, isText, where);
                }
            }
        }
        else if (ext == ".jsonl")
        {
            int lineNo = 0;
            foreach (string line in ReadUtf8(path).Split('\n'))
            {
                lineNo++;
                string trimmed = line.TrimEnd('\r');
                if (trimmed.Trim().Length == 0) continue;
                string where = $"{name}:{lineNo}";
                JsonDocument doc;
                try
                {
                    doc = JsonDocument.Parse(trimmed);
                }
                catch (JsonException e)
                {
                    throw new DataFormatException($"{where}: not valid JSON: {FirstSentence(e.Message)}", e);
                }
                using (doc)
                {
                    var (ex, isText) = Parse(doc.RootElement, where, options);
                    Add(ex, isText, where);
                }
            }
        }
        else
        {
            throw new DataFormatException($"{name}: unknown data file type \"{ext}\" (expected .json, .jsonl or .txt)");
        }
        if (examples.Count == 0) throw new DataFormatException($"{name}: the file holds no records");
        return (examples, plain ?? false);
    }

    private static string ReadUtf8(string path)
    {
        try
        {
            return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(File.ReadAllBytes(path)).TrimStart('\uFEFF');
        }
        catch (DecoderFallbackException e)
        {
            throw new DataFormatException($"{Path.GetFileName(path)}: not valid UTF-8 at byte {e.Index}", e);
        }
    }

    // Line (1-based) where each element of the top-level array starts.
    private static int[] RecordLines(string text, int count)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        var lines = new int[count];
        var reader = new Utf8JsonReader(utf8);
        int found = 0, line = 1;
        long scanned = 0;
        while (found < count && reader.Read())
        {
            bool elementStart = reader.CurrentDepth == 1 &&
                reader.TokenType is not (JsonTokenType.EndObject or JsonTokenType.EndArray);
            if (!elementStart) continue;
            long at = reader.TokenStartIndex;
            for (; scanned < at; scanned++)
                if (utf8[scanned] == (byte)'\n') line++;
            lines[found++] = line;
            if (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray) reader.Skip();
        }
        return lines;
    }

    private static string FirstSentence(string message)
    {
        int i = message.IndexOf(" Path:", StringComparison.Ordinal);
        return i > 0 ? message[..i] : message;
    }

    /// <summary>One record (a JSON object) as an example; <paramref name="where"/> prefixes error messages.</summary>
    public static (DataExample Example, bool IsText) Parse(JsonElement record, string where, DataReadOptions options)
    {
        if (record.ValueKind != JsonValueKind.Object)
            throw new DataFormatException($"{where}: a record must be a JSON object, got {record.ValueKind}");
        DataFormat format = options.Format;
        if (format == DataFormat.Auto)
        {
            if (record.TryGetProperty("instruction", out _)) format = DataFormat.Alpaca;
            else if (record.TryGetProperty("messages", out _) || record.TryGetProperty("conversations", out _)) format = DataFormat.Chat;
            else if (record.TryGetProperty("output", out _)) format = DataFormat.InputOutput;
            else if (record.TryGetProperty("text", out _)) format = DataFormat.Text;
            else
                throw new DataFormatException(
                    $"{where}: cannot tell the record's format from its fields ({Fields(record)}); expected instruction/input/output, input/output, messages, conversations or text");
        }
        switch (format)
        {
            case DataFormat.Alpaca:
            {
                string instruction = RequiredString(record, "instruction", where);
                string? input = OptionalString(record, "input", where);
                string output = RequiredString(record, "output", where);
                return (DataExample.Pair(options.Prompt.Format(instruction, input), output, where), false);
            }
            case DataFormat.InputOutput:
                return (DataExample.Pair(RequiredString(record, "input", where), RequiredString(record, "output", where), where), false);
            case DataFormat.Chat:
            {
                var messages = ChatMessages(record, where);
                if (!messages.Any(m => m.Role == "assistant"))
                    throw new DataFormatException($"{where}: the conversation has no assistant message to train on");
                return (DataExample.Chat(messages, where), false);
            }
            case DataFormat.Text:
                return (new DataExample([new Segment(RequiredString(record, "text", where), true)], where), true);
            default:
                throw new ArgumentOutOfRangeException(nameof(options), format, "unknown data format");
        }
    }

    private static List<ChatMessage> ChatMessages(JsonElement record, string where)
    {
        bool openAi = record.TryGetProperty("messages", out var list);
        if (!openAi && !record.TryGetProperty("conversations", out list))
            throw new DataFormatException($"{where}: a chat record needs \"messages\" or \"conversations\"");
        string key = openAi ? "messages" : "conversations";
        if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() == 0)
            throw new DataFormatException($"{where}: \"{key}\" must be a non-empty array");
        var messages = new List<ChatMessage>();
        int i = 0;
        foreach (var m in list.EnumerateArray())
        {
            string at = $"{where}: {key}[{i++}]";
            if (m.ValueKind != JsonValueKind.Object) throw new DataFormatException($"{at} must be an object");
            string role = RequiredString(m, openAi ? "role" : "from", at);
            string content = RequiredString(m, openAi ? "content" : "value", at);
            string mapped = role switch
            {
                "system" => "system",
                "user" or "human" or "prompter" => "user",
                "assistant" or "gpt" or "bot" => "assistant",
                _ => throw new DataFormatException($"{at}: unknown role \"{role}\" (expected system, user/human/prompter or assistant/gpt)"),
            };
            messages.Add(new ChatMessage(mapped, content));
        }
        return messages;
    }

    private static string RequiredString(JsonElement o, string key, string where)
    {
        if (!o.TryGetProperty(key, out var v))
            throw new DataFormatException($"{where}: missing field \"{key}\" (the record has {Fields(o)})");
        if (v.ValueKind != JsonValueKind.String)
            throw new DataFormatException($"{where}: field \"{key}\" must be a string, got {v.ValueKind}");
        return v.GetString()!;
    }

    private static string? OptionalString(JsonElement o, string key, string where)
    {
        if (!o.TryGetProperty(key, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.String)
            throw new DataFormatException($"{where}: field \"{key}\" must be a string, got {v.ValueKind}");
        return v.GetString();
    }

    private static string Fields(JsonElement o)
    {
        var names = o.EnumerateObject().Select(p => p.Name).ToList();
        return names.Count == 0 ? "no fields" : string.Join(", ", names);
    }
}
