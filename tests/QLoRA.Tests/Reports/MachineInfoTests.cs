using QLoRA.Reports;

namespace QLoRA.Tests.Reports;

public class MachineInfoTests
{
    [TestCase("48K", 48L << 10)]
    [TestCase("2048K\n", 2048L << 10)]
    [TestCase("307200K", 300L << 20)]
    [TestCase("32M", 32L << 20)]
    [TestCase("1G", 1L << 30)]
    [TestCase("4096", 4096L)]
    public void CacheSizesParseAsSysfsWritesThem(string text, long bytes) =>
        Assert.That(MachineInfo.ParseCacheSize(text), Is.EqualTo(bytes));

    [TestCase("")]
    [TestCase("K")]
    [TestCase("-5K")]
    [TestCase("0K")]
    [TestCase("12Q")]
    [TestCase("99999999999999999999K")]
    public void AnythingElseIsNotACacheSize(string text) => Assert.That(MachineInfo.ParseCacheSize(text), Is.Null);

    [Test]
    public void TheLastLevelCacheIsAtLeastTheL1()
    {
        long llc = MachineInfo.LastLevelCacheBytes();
        Assert.That(llc, Is.GreaterThanOrEqualTo(32L << 10));
        string l1 = "/sys/devices/system/cpu/cpu0/cache/index0/size";
        if (File.Exists(l1)) Assert.That(llc, Is.GreaterThan(MachineInfo.ParseCacheSize(File.ReadAllText(l1))!.Value));
    }
}
